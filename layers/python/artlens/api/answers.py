"""The API's answers: POST /predict (classify one picture, find its neighbours, say how sure
that is), GET /map (the collection projected to 3D, with the projection), POST /preview and
GET /whoami, with their declared JSON shapes (TypedDict).

How sure an answer is (`assessment`), in the order the rules are tried:
  not_artwork / uniform_image        every channel of the model input has a standard deviation
                                     under UNIFORM_STD (0.02 of the [0, 1] range): a blank page,
                                     a flat colour, a lens cap; nothing there to classify
  not_artwork / far_from_collection  only when the model card gives `min_similarity` and the
                                     collection holds another work: the nearest work of any
                                     type is less similar than that
  uncertain / low_probability        top probability < min_probability (default 0.6)
  uncertain / small_margin           top - second < min_margin (default 0.2)
  confident / null                   otherwise
Thresholds come from the serving model's card, `serving.uncertainty` {min_probability,
min_margin, min_similarity} (written by the calibrating training job), each falling back to the
default when absent or out of range. `candidates` is always the two most probable types.
"""

from __future__ import annotations

import base64
import io
import math
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

import numpy as np
from PIL import Image

from artlens import renditions
from artlens.api.events import MAX_BODY_BYTES, UploadRequest
from artlens.digests import sha256_hex
from artlens.duplicates import DuplicateThresholds, RelationKind, hamming, perceptual_hash
from artlens.errors import NotFound
from artlens.image import load_image, preprocess
from artlens.index.embeddings import EmbeddingStore, Neighbor
from artlens.index.works import WorkFields, WorkStore
from artlens.lake import DEFAULT_URL_EXPIRES_S, ObjectLake, upload_headers
from artlens.models.classifier import Classifier
from artlens.models.versions import versions_of
from artlens.names import SCOPE_PREDICT, UPLOADS_PREFIX

PROBABILITY_DIGITS = 6
SIMILARITY_DIGITS = 6
EMBEDDING_DIGITS = 6
COORDINATE_DIGITS = 5
PROJECTION_SIGNIFICANT = 8  # the projection's numbers: enough that it reproduces the points
SCOPES = ("class", "all")
DEFAULT_MIN_PROBABILITY = 0.6
DEFAULT_MIN_MARGIN = 0.2
UNIFORM_STD = 0.02
# Pictures from this size up are hashed beside their decode (below it the hand-off costs more
# than the hash).
HASH_ASIDE_BYTES = 256 * 1024
_HASHER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="sha256")
PREVIEW_SIDE = 512
PREVIEW_QUALITY = 85

Status = Literal["confident", "uncertain", "not_artwork"]


class RecordFields(TypedDict):
    """A work's collection record as every neighbour and map point carries it (null: not
    known; artlens.index.works)."""

    original_name: str | None  # the file name it was dropped as
    title: str | None
    maker: str | None
    date: str | None  # as catalogued, free text
    inventory_number: str | None
    catalogued_type: str | None  # as catalogued (a model class when it names one)
    permalink: str | None  # http(s) URL of the work in the museum's own catalogue
    licence: str | None


class PictureUrls(TypedDict):
    """Where the page gets a work's picture: renditions without metadata, at URLs that stay
    the same for an hour (browsers cache them); the original is never handed out."""

    thumbnail_url: str  # long side at most 256 px
    url: str  # long side at most 1,024 px (the larger view)


class NeighborAnswer(RecordFields, PictureUrls):
    key: str
    sha256: str
    label: str
    similarity: float  # cosine similarity, 1 = the same direction
    # near_duplicate: the same picture re-encoded, rescaled or cropped; related: a close
    # relative (artlens.duplicates); null: a similar work
    relation: RelationKind | None


class AlreadyInCollection(RecordFields, PictureUrls):
    """The work a predicted picture already is (exact: the same bytes) or nearly is."""

    kind: Literal["exact", "near_duplicate"]
    key: str
    sha256: str
    label: str
    similarity: float
    hamming: int | None  # perceptual hash bits apart (0 for exact)


class Timings(TypedDict):
    decode: float
    infer: float
    search: float
    total: float


class Thresholds(TypedDict):
    min_probability: float
    min_margin: float
    min_similarity: float | None  # null: the far-from-collection rule is off
    uniform_std: float


class Assessment(TypedDict):
    status: Status
    candidates: list[str]  # the two most probable types, most probable first
    reason: str | None  # low_probability | small_margin | uniform_image | far_from_collection
    thresholds: Thresholds
    thresholds_from: Literal["card", "defaults"]


class PredictAnswer(TypedDict):
    """POST /predict 200 (docs/architecture.md)."""

    label: str
    probability: float
    probabilities: dict[str, float]  # every class, in the model's order
    neighbors: list[NeighborAnswer]
    model_version: str
    timings_ms: Timings
    embedding: list[float]  # the picture's embedding (GET /map's projection places it)
    sha256: str  # of the picture's bytes: POST /predict {"sha256": ...} asks again
    assessment: Assessment
    # When uncertain: the nearest work of each candidate type (null: none of that type).
    nearest_by_type: dict[str, NeighborAnswer | None] | None
    # The collection already holds this picture (or a near duplicate of it); null otherwise.
    already_in_collection: AlreadyInCollection | None


class MapPoint(RecordFields, PictureUrls):
    key: str
    sha256: str
    label: str
    x: float
    y: float
    z: float


class Projection(TypedDict):
    """xyz = components . (embedding - mean); the [-1, 1] scaling is in the components."""

    mean: list[float]
    components: list[list[float]]  # 3 rows of D


class MapAnswer(TypedDict):
    """GET /map 200."""

    model_version: str | None
    classes: list[str]
    points: list[MapPoint]
    projection: Projection | None  # null when the collection is empty


class PreviewAnswer(TypedDict):
    """POST /preview 200: a JPEG the browser can show, for a format it may not decode."""

    preview: str  # data:image/jpeg;base64,...
    width: int  # of the preview (long side at most PREVIEW_SIDE, never enlarged)
    height: int
    format: str  # of the picture sent (JPEG, PNG, WEBP, GIF, BMP, TIFF)


class UploadAnswer(TypedDict):
    """POST /uploads 200: how to PUT the picture, then POST /predict {"key": key}."""

    key: str  # uploads/<sha256>
    url: str  # the presigned PUT URL (relative to the API in the local stack)
    method: Literal["PUT"]
    headers: dict[str, str]  # send exactly these (signed), plus Content-Length = size
    expires_at: int  # unix seconds
    max_bytes: int  # the largest picture the service takes
    exists: bool  # the service already holds this picture: no PUT needed


class WorkAnswer(RecordFields):
    """GET /works/{key} 200: one work's record, where it is and how the model sees it."""

    sha256: str
    key: str | None  # gallery/<sha256>.<ext> (null: recorded, not indexed yet)
    url: str | None  # the 1,024 px rendition (null: not indexed)
    thumbnail_url: str | None
    label: str | None  # the serving model's type (null: not indexed by that version)
    probability: float | None
    model_version: str
    catalogued_type_known: bool | None  # false: not one of the model's classes
    extra: dict[str, Any]  # the sidecar's other columns (and values kept as invalid)
    history: list[dict[str, Any]]  # replaced values, oldest first
    created_at: str | None  # ISO 8601 (null: indexed, never recorded)
    updated_at: str | None


class WhoAmI(TypedDict):
    sub: str | None
    scheme: str | None
    scopes: list[str]  # predict, review (artlens.names.SCOPES); the page offers what they allow
    expires_at: int | None  # unix seconds; null when the credential does not expire (or the
    #                         authorizer did not say)


@dataclass(frozen=True)
class Uncertainty:
    """The assessment's thresholds (see the module docstring)."""

    min_probability: float = DEFAULT_MIN_PROBABILITY
    min_margin: float = DEFAULT_MIN_MARGIN
    min_similarity: float | None = None
    source: Literal["card", "defaults"] = "defaults"

    @classmethod
    def from_card(cls, raw: Mapping[str, Any] | None) -> Uncertainty:
        """`serving.uncertainty` of a card's JSON; out-of-range or missing values default."""
        serving = (raw or {}).get("serving")
        given = serving.get("uncertainty") if isinstance(serving, Mapping) else None
        if not isinstance(given, Mapping):
            return cls()

        def number(name: str, low: float, high: float) -> float | None:
            value = given.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value) if math.isfinite(value) and low <= value <= high else None

        probability, margin = number("min_probability", 0, 1), number("min_margin", 0, 1)
        similarity = number("min_similarity", -1, 1)
        return cls(
            min_probability=DEFAULT_MIN_PROBABILITY if probability is None else probability,
            min_margin=DEFAULT_MIN_MARGIN if margin is None else margin,
            min_similarity=similarity,
            source="card" if (probability, margin, similarity) != (None, None, None)
            else "defaults",
        )

    @classmethod
    def of(cls, classifier: Classifier) -> Uncertainty:
        # The Classifier protocol carries no card (ingest and tests use bare classifiers); an
        # OnnxClassifier has one.
        return cls.from_card(getattr(getattr(classifier, "card", None), "raw", None))

    def thresholds(self) -> Thresholds:
        return {
            "min_probability": self.min_probability, "min_margin": self.min_margin,
            "min_similarity": self.min_similarity, "uniform_std": UNIFORM_STD,
        }


def channel_spread(pixels: np.ndarray) -> float:
    """The largest per-channel standard deviation of model input pixels ([..., channels]).

    Channels are made rows first: numpy's reduction down the strided channel axis of
    [pixels, 3] takes ~0.9 ms at 160 px, over a contiguous copy ~0.07 ms."""
    rows = np.ascontiguousarray(pixels.reshape(-1, pixels.shape[-1]).T)
    return float(rows.std(axis=1).max())


def assess(
    probabilities: np.ndarray, classes: Sequence[str], spread: float,
    nearest_similarity: float | None, rules: Uncertainty,
) -> Assessment:
    """The assessment of one answer (rules in the module docstring). `spread` is the input's
    `channel_spread`; `nearest_similarity` that of the nearest other work of any type, None when
    the collection has none."""
    order = np.argsort(-probabilities, kind="stable")
    top, second = float(probabilities[order[0]]), float(probabilities[order[1]])
    reason: str | None = None
    status: Status = "confident"
    if spread < UNIFORM_STD:
        status, reason = "not_artwork", "uniform_image"
    elif (rules.min_similarity is not None and nearest_similarity is not None
          and nearest_similarity < rules.min_similarity):
        status, reason = "not_artwork", "far_from_collection"
    elif top < rules.min_probability:
        status, reason = "uncertain", "low_probability"
    elif top - second < rules.min_margin:
        status, reason = "uncertain", "small_margin"
    return {
        "status": status,
        "candidates": [classes[int(order[0])], classes[int(order[1])]],
        "reason": reason,
        "thresholds": rules.thresholds(),
        "thresholds_from": rules.source,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 2)


def record_fields(work: WorkFields) -> RecordFields:
    return {
        "original_name": work.original_name, "title": work.title, "maker": work.maker,
        "date": work.date, "inventory_number": work.inventory_number,
        "catalogued_type": work.catalogued_type, "permalink": work.permalink,
        "licence": work.licence,
    }


def picture_urls(lake: ObjectLake, sha256: str, base_url: str | None = None) -> PictureUrls:
    found = renditions.urls(lake, sha256, base_url=base_url)
    return {"thumbnail_url": found["thumbnail_url"], "url": found["preview_url"]}


def _neighbor(
    row: Neighbor, lake: ObjectLake, base_url: str | None = None,
    relation: RelationKind | None = None,
) -> NeighborAnswer:
    answer: NeighborAnswer = {
        "key": row.key,
        "sha256": row.sha256,
        "label": row.label,
        "similarity": round(float(row.similarity), SIMILARITY_DIGITS),
        "relation": relation,
        **picture_urls(lake, row.sha256, base_url),
        **record_fields(row.work),
    }
    return answer


def _relation(row: Neighbor, phash: int, rules: DuplicateThresholds) -> RelationKind | None:
    distance = hamming(phash, row.phash) if row.phash is not None else None
    return rules.judge(row.similarity, distance)


def _already_in_collection(
    own: Neighbor | None, phash: int, nearest: Neighbor | None, lake: ObjectLake,
    rules: DuplicateThresholds, base_url: str | None,
) -> AlreadyInCollection | None:
    """The same bytes indexed under the version (`own`, the query picture's row: exact), else
    the nearest work of any type when it is a near duplicate (similar enough AND its
    perceptual hash close enough)."""
    if own is not None:
        return {"kind": "exact", "key": own.key, "sha256": own.sha256, "label": own.label,
                "similarity": 1.0, "hamming": 0, **picture_urls(lake, own.sha256, base_url),
                **record_fields(own.work)}
    if nearest is None or _relation(nearest, phash, rules) != "near_duplicate":
        return None
    assert nearest.phash is not None  # judged a near duplicate: its hash was compared
    return {"kind": "near_duplicate", "key": nearest.key, "sha256": nearest.sha256,
            "label": nearest.label,
            "similarity": round(float(nearest.similarity), SIMILARITY_DIGITS),
            "hamming": hamming(phash, nearest.phash),
            **picture_urls(lake, nearest.sha256, base_url), **record_fields(nearest.work)}


_RECORD_NAMES = ("original_name", "title", "maker", "date", "inventory_number",
                 "catalogued_type", "permalink", "licence")


def predict_image(
    data: bytes, classifier: Classifier, store: EmbeddingStore, lake: ObjectLake,
    neighbors: int = 5, scope: str = "class", *, max_bytes: int = MAX_BODY_BYTES,
    base_url: str | None = None, on_accepted: Callable[[str], None] | None = None,
) -> PredictAnswer:
    """Bytes of one picture -> the POST /predict answer (see docs/architecture.md).

    Neighbours are searched among rows of the classifier's own model version (embeddings of two
    models are not comparable), restricted to the predicted label when scope is "class", and
    never include the query picture itself (same SHA-256). The neighbours, the nearest work of
    each candidate type and the nearest work of any type (far-from-collection rule, and is it a
    near duplicate?) are one round trip to the index. `base_url`: where renditions are served
    (CloudFront on AWS; None: the lake's own hour-stable URLs). `on_accepted(sha256)` runs as
    soon as the bytes decode as a picture we accept, before the model (the caller starts
    keeping the upload then, so that lake call overlaps the inference and the search).
    """
    if scope not in SCOPES:
        raise ValueError(f"scope must be 'class' or 'all', not {scope!r}")
    started = time.perf_counter()
    size = classifier.input_size
    # hashlib and Pillow's decoder both release the GIL: a large picture is hashed on another
    # core while it decodes (1-2 ms for a 6 MP photo); a small one is hashed in place.
    hashing = _HASHER.submit(sha256_hex, data) if len(data) >= HASH_ASIDE_BYTES else None
    loaded = load_image(data, max_bytes=max_bytes, size=size)
    digest = hashing.result() if hashing is not None else sha256_hex(data)
    if on_accepted is not None:
        on_accepted(digest)
    pixels = preprocess(loaded.rgb, size)[np.newaxis]
    decoded = time.perf_counter()

    prediction = classifier.predict(pixels)
    probabilities = prediction.probabilities[0]
    embedding = prediction.embeddings[0]
    best = int(np.argmax(probabilities))
    label = classifier.classes[best]
    inferred = time.perf_counter()

    rules = Uncertainty.of(classifier)
    spread = channel_spread(pixels)
    # The verdict before the search decides which searches are needed; only the
    # far-from-collection rule needs the search's result.
    provisional = assess(probabilities, classifier.classes, spread, None, rules)
    candidates = provisional["candidates"]
    groups: list[tuple[str | None, int]] = [(label if scope == "class" else None, neighbors)]
    per_type = 1 if provisional["status"] == "uncertain" else 0
    groups += [(candidate, per_type) for candidate in candidates]  # nearest of each type
    groups.append((None, 1))  # nearest of any type: far from the collection? a near duplicate?
    # The query picture's own row (is it already indexed?) comes back in the same round trip.
    found, *by_type, nearest_any, own = store.nearest_groups(
        embedding, groups, exclude_sha256=digest, model_version=classifier.version,
        with_excluded=True,
    )
    searched = time.perf_counter()

    assessment = assess(
        probabilities, classifier.classes, spread,
        nearest_any[0].similarity if nearest_any else None, rules,
    )
    duplicates = DuplicateThresholds.from_card(
        (getattr(getattr(classifier, "card", None), "raw", None) or {}).get("serving")
    )
    phash = perceptual_hash(pixels[0])
    nearest_by_type: dict[str, NeighborAnswer | None] | None = None
    if assessment["status"] == "uncertain":
        nearest_by_type = {
            candidate: _neighbor(rows[0], lake, base_url, _relation(rows[0], phash, duplicates))
            if rows else None
            for candidate, rows in zip(candidates, by_type, strict=True)
        }
    already = _already_in_collection(
        own[0] if own else None, phash, nearest_any[0] if nearest_any else None, lake,
        duplicates, base_url,
    )
    return {
        "label": label,
        "probability": round(float(probabilities[best]), PROBABILITY_DIGITS),
        "probabilities": {
            name: round(float(p), PROBABILITY_DIGITS)
            for name, p in zip(classifier.classes, probabilities, strict=True)
        },
        "neighbors": [_neighbor(row, lake, base_url, _relation(row, phash, duplicates))
                      for row in found],
        "model_version": classifier.version,
        "timings_ms": {
            "decode": _ms(decoded - started),
            "infer": _ms(inferred - decoded),
            "search": _ms(searched - inferred),
            "total": _ms(searched - started),
        },
        "embedding": [round(float(v), EMBEDDING_DIGITS) for v in embedding],
        "sha256": digest,
        "assessment": assessment,
        "nearest_by_type": nearest_by_type,
        "already_in_collection": already,
    }


@dataclass(frozen=True)
class Projected:
    points: np.ndarray  # [N, 3]
    mean: np.ndarray  # [D]
    components: np.ndarray  # [3, D]: points = (embeddings - mean) @ components.T


def project_3d(embeddings: np.ndarray) -> Projected:
    """PCA to 3 components via SVD, scaled into [-1, 1]; deterministic signs.

    The scaling is folded into the components, so any embedding (a query's) is placed with
    `components @ (embedding - mean)` exactly as the points were. Fewer than 3 informative
    directions (tiny collections) leave the extra axes (rows of zeros) at 0.
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n, dim = x.shape
    components = np.zeros((3, dim), dtype=np.float64)
    mean = x.mean(axis=0) if n else np.zeros(dim, dtype=np.float64)
    if n == 0:
        return Projected(np.zeros((0, 3)), mean, components)
    centred = x - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = min(3, int(np.sum(s > 1e-9 * max(float(s[0]) if s.size else 0.0, 1e-30))))
    if k > 0:
        # Flip each component so its largest loading is positive: SVD signs are arbitrary, and
        # the map should not mirror itself between two calls on the same data.
        signs = np.sign(vt[np.arange(k), np.argmax(np.abs(vt[:k]), axis=1)])
        signs[signs == 0] = 1.0
        components[:k] = vt[:k] * signs[:, np.newaxis]
        scale = float(np.max(np.abs(centred @ components.T)))
        if scale > 0:
            components /= scale
    return Projected(centred @ components.T, mean, components)


def _significant(values: np.ndarray) -> list[float]:
    return [float(f"{v:.{PROJECTION_SIGNIFICANT}g}") for v in values]


def collection_map(
    store: EmbeddingStore,
    lake: ObjectLake,
    model_version: str | None,
    limit: int,
    classes: Sequence[str] | None = None,
    *,
    base_url: str | None = None,
) -> MapAnswer:
    """GET /map: up to `limit` gallery embeddings of one model version projected to 3D, and
    the projection itself (null for an empty collection)."""
    version = model_version or versions_of(store).current()
    rows = list(store.sample_embeddings(version, limit)) if version else []
    answer: MapAnswer = {
        "model_version": version,
        "classes": list(classes) if classes is not None else sorted({row.label for row in rows}),
        "points": [],
        "projection": None,
    }
    if not rows:
        return answer
    # The points are computed from the rounded projection the client gets, so a client that
    # projects a stored work's embedding finds that very point.
    projected = project_3d(np.stack([row.embedding for row in rows]))
    mean = np.array(_significant(projected.mean))
    components = np.array([_significant(row) for row in projected.components])
    embeddings = np.stack([row.embedding for row in rows]).astype(np.float64)
    points = (embeddings - mean) @ components.T
    answer["points"] = [
        {
            "key": row.key,
            "sha256": row.sha256,
            "label": row.label,
            "x": round(float(xyz[0]), COORDINATE_DIGITS),
            "y": round(float(xyz[1]), COORDINATE_DIGITS),
            "z": round(float(xyz[2]), COORDINATE_DIGITS),
            **picture_urls(lake, row.sha256, base_url),
            **record_fields(row.work),
        }
        for row, xyz in zip(rows, points, strict=True)
    ]
    answer["projection"] = {
        "mean": mean.tolist(), "components": components.tolist(),
    }
    return answer


def preview_image(data: bytes, *, max_bytes: int = MAX_BODY_BYTES) -> PreviewAnswer:
    """POST /preview: any accepted picture as a JPEG data URL, long side at most PREVIEW_SIDE
    (never enlarged), EXIF orientation applied, no metadata (Pillow writes none unless asked)."""
    loaded = load_image(data, max_bytes=max_bytes, size=PREVIEW_SIDE)
    # The preview's size comes from the picture's own (oriented) size: load_image may have
    # reduced each axis by its own factor (the model input does not keep the aspect ratio).
    ratio = min(1.0, PREVIEW_SIDE / max(loaded.width, loaded.height))
    target = (max(1, round(loaded.width * ratio)), max(1, round(loaded.height * ratio)))
    picture = loaded.rgb if loaded.rgb.size == target else loaded.rgb.resize(
        target, Image.Resampling.LANCZOS
    )
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=PREVIEW_QUALITY, optimize=True)
    return {
        "preview": "data:image/jpeg;base64," + base64.b64encode(out.getvalue()).decode("ascii"),
        "width": picture.width,
        "height": picture.height,
        "format": loaded.format,
    }


def upload_ticket(
    request: UploadRequest, lake: ObjectLake, *, max_bytes: int,
    expires: int = DEFAULT_URL_EXPIRES_S,
) -> UploadAnswer:
    """POST /uploads: a presigned PUT for one picture under its content address, so a picture
    already held (sent before, or PUT twice) is stored once and its shared link keeps working."""
    key = UPLOADS_PREFIX + request.sha256
    return {
        "key": key,
        "url": lake.upload_url(key, request.content_type, request.size, request.sha256, expires),
        "method": "PUT",
        "headers": upload_headers(request.content_type, request.sha256),
        "expires_at": int(time.time()) + int(expires),
        "max_bytes": max_bytes,
        "exists": lake.exists(key),
    }


def who_am_i(authorizer: Mapping[str, Any] | None) -> WhoAmI:
    """GET /whoami from the authorizer's context (API Gateway passes it in the event's
    requestContext.authorizer, its values as strings): no database, no token parsing."""
    context = authorizer or {}

    def text(name: str) -> str | None:
        value = context.get(name)
        return str(value) if value not in (None, "") else None

    expires = text("exp")
    return {
        "sub": text("sub") or text("principalId"),
        "scheme": text("scheme"),
        "scopes": sorted(set((text("scopes") or SCOPE_PREDICT).split())),
        "expires_at": int(expires) if expires is not None and expires.isdigit() else None,
    }


def work_record(
    sha256: str, store: EmbeddingStore, lake: ObjectLake, model_version: str,
    *, base_url: str | None = None,
) -> WorkAnswer:
    """GET /works/{key}: the record of one work by its SHA-256 (404 when the collection holds
    no such work: neither a record nor an index row)."""
    stored = WorkStore(store.database).get(sha256)
    row = store.image_of(sha256, model_version)
    key = row.key if row is not None else store.key_of(sha256, model_version)
    if stored is None and key is None:
        raise NotFound(f"The collection holds no work with SHA-256 {sha256}.")
    stored = stored or {}
    fields = WorkFields(*(stored.get(name) for name in _RECORD_NAMES))
    created, updated = stored.get("created_at"), stored.get("updated_at")
    urls = picture_urls(lake, sha256, base_url) if key is not None else None
    answer: WorkAnswer = {
        "sha256": sha256,
        "key": key,
        "url": urls["url"] if urls else None,
        "thumbnail_url": urls["thumbnail_url"] if urls else None,
        "label": row.label if row is not None else None,
        "probability": round(float(row.probability), PROBABILITY_DIGITS) if row else None,
        "model_version": model_version,
        **record_fields(fields),
        "catalogued_type_known": stored.get("catalogued_type_known"),
        "extra": dict(stored.get("extra") or {}),
        "history": list(stored.get("history") or []),
        "created_at": created.isoformat() if created is not None else None,
        "updated_at": updated.isoformat() if updated is not None else None,
    }
    return answer
