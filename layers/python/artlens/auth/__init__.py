"""Who may call the API: bearer tokens (tokens), signed requests (signing) with their API keys
(keys) and replay ledger (replay), and the authorizer's scheme table and policy (policy).

Nothing is imported here and no module imports numpy or psycopg2: the authorizer's cold start
stays small (tests/unit/test_authorizer.py checks its import closure)."""
