"""Typed errors. Handlers map them to HTTP responses in one place (artlens.http)."""

from __future__ import annotations


class ArtLensError(Exception):
    """Base class: every error a client may see carries an HTTP status and a stable code."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status

    def to_body(self) -> dict[str, str]:
        return {"error": self.code, "message": self.message}


class BadRequest(ArtLensError):
    status = 400
    code = "bad_request"


class Unauthorized(ArtLensError):
    status = 401
    code = "unauthorized"


class NotFound(ArtLensError):
    status = 404
    code = "not_found"


class Unavailable(ArtLensError):
    """A dependency (database, object store) is down; the client may retry."""

    status = 503
    code = "unavailable"


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
