"""The errors a client may see, each with a stable code and the HTTP status it maps to.

The library raises these domain errors (an index that is down is `Unavailable`, a version that
is not embedded yet is `VersionNotReady`); only artlens.api.responses turns them into responses,
and this table is the one place their statuses are written down.
"""

from __future__ import annotations


class ArtLensError(Exception):
    """Base class: every error a client may see carries an HTTP status and a stable code."""

    status: int = 500
    code: str = "internal_error"

    def __init_subclass__(cls, *, status: int | None = None, code: str | None = None, **kw: object):
        # `class NotFound(ArtLensError, status=404, code="not_found")`: one line per error.
        super().__init_subclass__(**kw)
        if status is not None:
            cls.status = status
        if code is not None:
            cls.code = code

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class BadRequest(ArtLensError, status=400, code="bad_request"):
    """The request is malformed (body, query, event)."""


class Unauthorized(ArtLensError, status=401, code="unauthorized"):
    """No valid credential; the authorizer denies."""


class Forbidden(ArtLensError, status=403, code="insufficient_scope"):
    """A known caller whose token or key lacks the scope this route needs (e.g. `review`)."""


class NotFound(ArtLensError, status=404, code="not_found"):
    """No such object, route or model version."""


class VersionNotReady(ArtLensError, status=409, code="version_not_ready"):
    """Only a completely embedded ('ready') model version may serve queries."""


class Unavailable(ArtLensError, status=503, code="unavailable"):
    """A dependency (database, object store) is down; the client may retry."""


# Reason code -> HTTP status for refused images.
IMAGE_REJECTION_STATUS: dict[str, int] = {
    "empty": 400,
    "corrupt_image": 400,
    "too_large": 413,
    "too_many_pixels": 413,
    "unsupported_format": 415,
}


class ImageRejected(ArtLensError):
    """The bytes are not an image we accept. `code` is one of IMAGE_REJECTION_STATUS."""

    def __init__(self, code: str, message: str):
        super().__init__(message, code=code, status=IMAGE_REJECTION_STATUS[code])
