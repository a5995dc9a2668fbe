-- Schema of the embedding index. Every statement is idempotent (IF NOT EXISTS), so a database
-- that was set up by hand, or by an interrupted run, converges to the same shape.

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS model_versions (
    version      text PRIMARY KEY,
    state        text NOT NULL DEFAULT 'building' CHECK (state IN ('building', 'ready')),
    is_current   boolean NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz
);

-- At most one current version; activation swaps it inside one transaction.
CREATE UNIQUE INDEX IF NOT EXISTS model_versions_one_current
    ON model_versions (is_current) WHERE is_current;

CREATE TABLE IF NOT EXISTS images (
    id            bigserial PRIMARY KEY,
    key           text NOT NULL,
    sha256        text NOT NULL,
    label         text NOT NULL,
    probability   real NOT NULL,
    embedding     vector(128) NOT NULL,
    model_version text NOT NULL REFERENCES model_versions (version),
    width         integer NOT NULL,
    height        integer NOT NULL,
    size_bytes    integer NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT images_key_version_unique UNIQUE (key, model_version),
    CONSTRAINT images_sha256_version_unique UNIQUE (sha256, model_version)
);

-- m / ef_construction mirror artlens.store.HNSW_M / HNSW_EF_CONSTRUCTION;
-- EmbeddingStore.rebuild_index() re-creates the index with other values (make bench).
CREATE INDEX IF NOT EXISTS images_embedding_hnsw
    ON images USING hnsw (embedding vector_cosine_ops) WITH (m = 16, ef_construction = 64);

CREATE INDEX IF NOT EXISTS images_version_label ON images (model_version, label);
