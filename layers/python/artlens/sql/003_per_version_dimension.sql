-- Each model version keeps its embeddings at its own dimension (a 128-d model and a 256-d
-- model side by side during a reindex). The column loses its fixed dimension; every version
-- records its dimension; every version gets its own partial HNSW index over
-- `embedding::vector(D)`, which queries repeat word for word so that the planner uses it
-- (artlens.index.embeddings). New versions get theirs when they are registered.

ALTER TABLE model_versions ADD COLUMN IF NOT EXISTS embedding_dim integer
    CHECK (embedding_dim BETWEEN 1 AND 2000);  -- pgvector's HNSW limit for `vector`

-- Existing versions: the dimension of their rows (all 128 so far); 128 when they have none.
UPDATE model_versions v SET embedding_dim = COALESCE(
    (SELECT vector_dims(i.embedding) FROM images i WHERE i.model_version = v.version LIMIT 1),
    128)
WHERE embedding_dim IS NULL;
ALTER TABLE model_versions ALTER COLUMN embedding_dim SET NOT NULL;

-- The one index over all versions needs one dimension; it gives way to one index per version.
DROP INDEX IF EXISTS images_embedding_hnsw;
ALTER TABLE images ALTER COLUMN embedding TYPE vector;

-- Name and options as artlens.index.embeddings.version_index_name / HNSW_M /
-- HNSW_EF_CONSTRUCTION.
DO $$
DECLARE
    v record;
BEGIN
    FOR v IN SELECT version, embedding_dim FROM model_versions LOOP
        EXECUTE format(
            'CREATE INDEX IF NOT EXISTS %I ON images USING hnsw'
            ' ((embedding::vector(%s)) vector_cosine_ops) WITH (m = 16, ef_construction = 64)'
            ' WHERE model_version = %L',
            'images_hnsw_' || left(md5(v.version), 16), v.embedding_dim, v.version);
    END LOOP;
END
$$;
