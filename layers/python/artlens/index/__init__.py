"""The embedding index in PostgreSQL + pgvector: the connection and its transactions
(database), the schema (migrations, from ../sql), and embeddings with k-NN (embeddings)."""
