"""ArtLens Python client: signed requests to the API (library) and `python -m client` (CLI).

    from client import ArtLensClient
    client = ArtLensClient("https://api.example/prod", key_id="ak_...", secret="...")
    answer = client.predict(Path("picture.jpg").read_bytes())

The signing rules are artlens.auth.signing's (documented in docs/signing.md); this package only
applies them to outgoing requests.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:  # the shared library lives in the Lambda layer folder; `make` puts it on PYTHONPATH
    import artlens  # noqa: F401
except ImportError:  # `python -m client` straight from a checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "layers" / "python"))

from client.signer import ApiError, ArtLensClient, ClientConfig, Signer  # noqa: E402

__all__ = ["ApiError", "ArtLensClient", "ClientConfig", "Signer"]
