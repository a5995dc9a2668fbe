-- The replay ledger of signed requests (artlens.auth.replay.PostgresNonces): the INSERT that
-- wins the unique constraint is the only request allowed, in whichever container it lands.
-- Rows carry their expiry (the end of the request's time window) and are purged now and then.

CREATE TABLE IF NOT EXISTS request_nonces (
    key_id     text NOT NULL,
    nonce      text NOT NULL,
    expires_at timestamptz NOT NULL,
    CONSTRAINT request_nonces_unique UNIQUE (key_id, nonce)
);

CREATE INDEX IF NOT EXISTS request_nonces_expiry ON request_nonces (expires_at);
