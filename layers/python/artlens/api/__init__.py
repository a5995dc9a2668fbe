"""The HTTP API: events in (events), answers (answers, with their TypedDict shapes), routes, and
responses. Nothing is imported here, so the authorizer can use `artlens.api.events` alone."""
