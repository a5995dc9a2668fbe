"""Renditions: the smaller copies of a gallery work that the page shows, without metadata.

Originals stay private (an original can carry EXIF GPS, issue 13); tiles, the larger view and
the map show `renditions/<side>/<sha256>.jpg` instead: the longer side at most `side` pixels
(never upscaled, aspect kept), sRGB JPEG (progressive when longer than 256 px, baseline at
thumbnail size; one encode serves both when the picture is no larger than 256 px), written
with NO metadata at all (no EXIF, XMP, ICC profile or comment): the pixels are copied into an
image without `info` before encoding.

JPEG, not WebP: measured on this machine (Pillow 13, libjpeg-turbo, one 1024x768 photo-like
picture, single thread): JPEG q=85 progressive 7.4 ms (64 KB), baseline 1.9 ms; WebP q=80 at
Pillow's default method 4 47 ms (12 KB), method 0 11 ms (14 KB). Ingest runs this for every
picture, so encode time is throughput; JPEG also decodes everywhere without a fallback.

Rendering decodes ONCE with artlens.image.load_image(size=1024), which bounds the decode's
memory and returns a raster of at most 2047 px per axis (the JPEG draft makes a large photo
cheap); the 256 px copy is made from the 1024 px one. Ingest hands over its own decode (at the
model's input size): a picture small enough that it was decoded whole is not decoded again.
Measured here for a 3000x2250 JPEG (2.3 MB): 70-135 ms in all, depending on the shared
machine's load (decode 32 ms, LANCZOS to 1024 px 30 ms (BICUBIC would save ~10 ms), encodes
9 ms); 256 px: 4.6 KB, 1024 px: 65 KB.

URLs: the page asks for the same rendition many times, so its URL must stay the same for a
while or nothing caches. On AWS CloudFront serves renditions/ (RENDITIONS_BASE_URL, a stable
URL); elsewhere the lake's `cacheable_url_for` signs an expiry rounded to the hour.
"""

from __future__ import annotations

import io
import re
import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image, ImageCms

from artlens.errors import ArtLensError, ImageRejected, NotFound
from artlens.image import MAX_BYTES, LoadedImage, load_image
from artlens.lake import ObjectLake
from artlens.names import RENDITIONS_PREFIX

RENDITION_SIDES = (256, 1024)
THUMBNAIL_SIDE, PREVIEW_SIDE = RENDITION_SIDES
CONTENT_TYPE = "image/jpeg"
EXTENSION = "jpg"
JPEG_QUALITY = 85
DEFAULT_WORKERS = 8  # lake calls in flight during a backfill
DEFAULT_DECODERS = 2  # decodes at once: each may take up to artlens.image.MAX_DECODE_BYTES

_SHA256 = re.compile(r"[0-9a-f]{64}")


def rendition_key(sha256: str, side: int) -> str:
    """`renditions/<side>/<sha256>.jpg`; ValueError for anything but a lowercase hex SHA-256 and
    one of RENDITION_SIDES (a key is never built from arbitrary text)."""
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise ValueError(f"not a lowercase hex SHA-256: {sha256!r}")
    if side not in RENDITION_SIDES:
        raise ValueError(f"side must be one of {RENDITION_SIDES}, not {side!r}")
    return f"{RENDITIONS_PREFIX}{side}/{sha256}.{EXTENSION}"


def fitted(width: int, height: int, side: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most `side`; never enlarged."""
    longer = max(width, height)
    if longer <= side:
        return width, height
    scale = side / longer
    return max(1, round(width * scale)), max(1, round(height * scale))


def render(
    data: bytes, *, max_bytes: int = MAX_BYTES, decoded: LoadedImage | None = None
) -> dict[int, bytes]:
    """Every rendition of a picture: {side: JPEG bytes}. Raises ImageRejected (as load_image)
    for bytes that are not a picture we accept.

    `decoded`: the same bytes as load_image already decoded them for another use (ingest: at
    the model's input size). When it holds every pixel of the original, it is the raster this
    decode would give, so the picture is not decoded a second time."""
    if decoded is not None and decoded.full_size:
        loaded = decoded
    else:
        loaded = load_image(data, max_bytes=max_bytes, size=PREVIEW_SIDE)
    rgb = _to_srgb(loaded.rgb, loaded.icc_profile)
    out: dict[int, bytes] = {}
    # Largest first: each smaller copy is made from the previous one (less work, same look).
    source, encoded = rgb, b""
    for side in sorted(RENDITION_SIDES, reverse=True):
        # load_image reduces each axis by its own whole factor, so the raster's aspect can
        # differ from the original's: the target comes from the original's (oriented) size.
        target = fitted(loaded.width, loaded.height, side)
        # Never enlarge the raster either (a guard: load_image keeps each axis at least
        # min(1024, original), so the target always fits).
        target = (min(target[0], rgb.width), min(target[1], rgb.height))
        if encoded and source.size == target:
            # A picture no larger than the smaller side: the same pixels, the same bytes.
            out[side] = encoded
            continue
        if source.size != target:
            source = source.resize(target, Image.Resampling.LANCZOS)
        # Progressive only where it shows: a preview paints coarse-to-fine while it loads; a
        # picture of thumbnail size (a few KB) arrives at once, and baseline encodes in a third
        # of the time (0.29 against 0.9 ms at 256 px here): decided by the pixels encoded, so
        # the one encode a small picture gets is baseline too.
        encoded = _encode(source, progressive=max(source.size) > THUMBNAIL_SIDE)
        out[side] = encoded
    return {side: out[side] for side in RENDITION_SIDES}


def _encode(img: Image.Image, progressive: bool) -> bytes:
    # A copy that holds the pixels only (convert always returns a new image): Pillow's
    # encoder would otherwise write what the image's `info` still carries (a comment).
    clean = img.convert("RGB")
    clean.info = {}
    buffer = io.BytesIO()
    clean.save(buffer, format="JPEG", quality=JPEG_QUALITY, progressive=progressive,
               optimize=True)
    return buffer.getvalue()


_SRGB = ImageCms.createProfile("sRGB")


def _to_srgb(rgb: Image.Image, icc: bytes | None) -> Image.Image:
    """Pixels in sRGB: the rendition carries no profile, so browsers read it as sRGB. An RGB
    profile (Adobe RGB, Display P3, ...) is converted; a damaged or non-RGB one (a CMYK
    profile on a picture load_image already made RGB) leaves the pixels as they are."""
    if icc is None:
        return rgb
    try:
        profile = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if profile.profile.xcolor_space.strip() != "RGB":
            return rgb
        converted = ImageCms.profileToProfile(rgb, profile, _SRGB, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return rgb
    return converted if converted is not None else rgb


def write(lake: ObjectLake, sha256: str, renditions: dict[int, bytes]) -> list[str]:
    """Put each rendition under its key; the keys written, in the order of `renditions`."""
    keys = []
    for side, data in renditions.items():
        key = rendition_key(sha256, side)
        lake.put(key, data, CONTENT_TYPE)
        keys.append(key)
    return keys


def missing(lake: ObjectLake, sha256: str) -> list[int]:
    """The sides whose rendition object does not exist (yet)."""
    return [side for side in RENDITION_SIDES if not lake.exists(rendition_key(sha256, side))]


def urls(
    lake: ObjectLake, sha256: str, *, base_url: str | None = None, now: float | None = None
) -> dict:
    """{"thumbnail_url", "preview_url"}: URLs that stay the same for a while, so browsers (and
    CloudFront) cache them. `base_url` (AWS: the CloudFront origin serving renditions/) gives
    plain URLs; without it the lake signs an expiry rounded to the hour."""
    def url(side: int) -> str:
        key = rendition_key(sha256, side)
        if base_url:
            return f"{base_url.rstrip('/')}/{key}"
        return lake.cacheable_url_for(key, now=now)

    return {"thumbnail_url": url(THUMBNAIL_SIDE), "preview_url": url(PREVIEW_SIDE)}


# --------------------------------------------------------------------------- backfill


@dataclass
class BackfillCounts:
    """What a backfill did. `written` counts rendition objects (a dry run: those it would
    write); `failed` maps a gallery key to why it has no renditions."""

    checked: int = 0  # gallery objects looked at
    complete: int = 0  # already had every rendition
    works: int = 0  # works that got (or, in a dry run, would get) renditions
    written: int = 0
    failed: dict[str, str] = field(default_factory=dict)


def sha256_of_gallery_key(key: str) -> str:
    """gallery/<sha256>.<ext> -> <sha256>; ValueError for any other name."""
    stem = PurePosixPath(key).stem
    if not _SHA256.fullmatch(stem):
        raise ValueError(f"{key!r} is not named by a SHA-256")
    return stem


def backfill_renditions(
    lake: ObjectLake,
    keys: Iterable[str],
    *,
    dry_run: bool = False,
    workers: int = DEFAULT_WORKERS,
    decoders: int = DEFAULT_DECODERS,
    max_bytes: int = MAX_BYTES,
) -> BackfillCounts:
    """Write the missing renditions of each gallery object in `keys` (only the missing ones, so
    a second run writes nothing). Lake calls run on `workers` threads; at most `decoders`
    pictures are decoded at once, which bounds memory whatever `workers` is. A picture that
    cannot be rendered is counted under `failed` with its reason, and the others go on."""
    if workers < 1 or decoders < 1:
        raise ValueError("workers and decoders must be at least 1")
    counts = BackfillCounts()
    lock = threading.Lock()
    decoding = threading.BoundedSemaphore(decoders)

    def one(key: str) -> None:
        try:
            sha256 = sha256_of_gallery_key(key)
            sides = missing(lake, sha256)
            written = 0
            if sides and not dry_run:
                data = lake.get(key, max_bytes=max_bytes)
                with decoding:
                    renditions = render(data, max_bytes=max_bytes)
                del data
                written = len(write(lake, sha256, {s: renditions[s] for s in sides}))
            elif sides:
                written = len(sides)
        except (ImageRejected, NotFound, ValueError) as exc:
            reason = f"{exc.code}: {exc.message}" if isinstance(exc, ArtLensError) else str(exc)
            with lock:
                counts.checked += 1
                counts.failed[key] = reason
            return
        with lock:
            counts.checked += 1
            if not sides:
                counts.complete += 1
            else:
                counts.works += 1
                counts.written += written

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="artlens-rendition") as pool:
        # list(): re-raise the first unexpected error (the lake is down) instead of hiding it.
        list(pool.map(one, [k for k in keys if not k.endswith("/")]))
    return counts
