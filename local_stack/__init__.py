"""The ArtLens serving path on one machine: the same Lambda handlers behind a local gateway.

`python -m local_stack` starts an embedded PostgreSQL + pgvector, a folder data lake, one HTTP
server that turns requests into API Gateway proxy events for the authorizer and predict handlers,
and a watcher that turns files dropped into `incoming/` into S3->SQS events for the embed handler.
`python -m local_stack.token` prints a bearer token; `python -m local_stack.ingest DIR` feeds a
folder through the running stack.
"""
