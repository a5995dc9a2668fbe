-- Duplicates, relatives and curator review (artlens.duplicates, artlens.index.works,
-- artlens.index.reviews).

-- Every class's probability, in the model's class order: the review queue orders works by how
-- sure the model is that the catalogued type is wrong (1 - p(catalogued type)). NULL for rows
-- indexed before this column existed (the queue then uses the top probability).
ALTER TABLE images ADD COLUMN IF NOT EXISTS probabilities real[];

-- The 64-bit perceptual hash (dHash) of the picture: confirms a near duplicate that the
-- embedding proposes. NULL for works indexed before it existed (never judged a duplicate).
ALTER TABLE works ADD COLUMN IF NOT EXISTS phash bigint;

-- Pairs of works found to be near duplicates or relatives when one of them was indexed, under
-- the model version whose embedding found them. Stored once per pair (sha256 < other_sha256).
CREATE TABLE IF NOT EXISTS work_relations (
    sha256        text NOT NULL REFERENCES works (sha256),
    other_sha256  text NOT NULL REFERENCES works (sha256),
    kind          text NOT NULL CHECK (kind IN ('near_duplicate', 'related')),
    similarity    real NOT NULL,
    hamming       smallint,  -- NULL: one of the two has no perceptual hash
    model_version text NOT NULL,
    found_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (sha256, other_sha256, model_version),
    CHECK (sha256 < other_sha256)
);
CREATE INDEX IF NOT EXISTS work_relations_other ON work_relations (other_sha256);

-- Curator decisions: an audit trail, one row per decision, never updated or deleted. The work's
-- catalogued type (works.catalogued_type) is never overwritten: a correction lives here, and the
-- latest decision per work is what `make export-labels` hands to training.
CREATE TABLE IF NOT EXISTS reviews (
    id                bigserial PRIMARY KEY,
    sha256            text NOT NULL REFERENCES works (sha256),
    decision          text NOT NULL CHECK (decision IN ('confirm', 'correct')),
    label             text NOT NULL,  -- the type the curator settled on
    catalogued_type   text,           -- the catalogue's type when decided
    model_label       text,           -- what the model said, under model_version
    model_probability real,
    model_version     text NOT NULL,
    reviewer          text NOT NULL,  -- the token's or key's subject
    note              text,
    decided_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS reviews_sha256_latest ON reviews (sha256, decided_at DESC, id DESC);
