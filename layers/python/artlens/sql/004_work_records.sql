-- Collection records: what a museum knows about a work (title, maker, date, inventory number,
-- the catalogued type, a permalink, a licence), beside the embeddings. Keyed by the SHA-256 of
-- the picture, not by an `images` row: a work is the same picture under every model version,
-- and its record must survive a reindex or a rollback untouched (artlens.index.works).
--
-- Overwrite rules (artlens.index.works.WorkStore.upsert_many): a field given by a later drop
-- replaces the stored value; a field the drop leaves out or empty keeps it. Every replaced
-- non-null value is appended to `history` ({"at", "source_key", "fields": {name: old value}}),
-- so a catalogued value is never lost silently; `updated_at` moves only when something changed.

CREATE TABLE IF NOT EXISTS works (
    sha256                text PRIMARY KEY,
    original_name         text,    -- the file name as dropped (a path relative to the folder)
    source_key            text,    -- the incoming/ key of the latest drop (late records find it)
    title                 text,
    maker                 text,
    date_text             text,    -- free text as catalogued: "c. 1650", "1880-1885"
    inventory_number      text,
    catalogued_type       text,    -- as catalogued (a model class when it names one)
    catalogued_type_known boolean, -- null: none catalogued; false: not one of the model's classes
    permalink             text,
    licence               text,
    extra                 jsonb NOT NULL DEFAULT '{}'::jsonb,  -- the sidecar's other columns
    history               jsonb NOT NULL DEFAULT '[]'::jsonb,  -- replaced values, oldest first
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS works_source_key ON works (source_key);

-- Works indexed before records existed: a row each, with nothing known yet.
INSERT INTO works (sha256) SELECT DISTINCT sha256 FROM images ON CONFLICT (sha256) DO NOTHING;
