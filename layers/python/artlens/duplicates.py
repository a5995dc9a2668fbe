"""Is a picture already in the collection? Exact copies, near duplicates and relatives.

- exact: the same bytes (same SHA-256): the same work, whatever its name.
- near duplicate: the same picture re-encoded, rescaled, lightly cropped or brightened. Both
  tests must agree: the embeddings' cosine similarity is at least `min_similarity` AND the
  perceptual hashes differ in at most `max_hamming` of 64 bits. The embedding alone also pulls
  in other impressions of a print or a workshop copy; the hash alone is fooled by flat,
  look-alike layouts; together they are what a curator means by "the same picture".
- related: similarity at least `related_min_similarity` without being a near duplicate (another
  impression, a study for the painting, a close relative) — shown, never merged.

The thresholds come from the serving model's card, `serving.duplicates` (calibrated by
training/duplicates.py on copies of held-out pictures); DEFAULTS hold only when a card has none.

The perceptual hash is a 64-bit difference hash (dHash) of the model's input picture: the
picture in grey, box-averaged to 9 x 8, one bit per pair of horizontal neighbours (is the left
one darker?). It is computed from the array the model already gets, so it costs microseconds and
no second decode; any affine pixel scaling (the model's [-1, 1] or [0, 1]) gives the same bits.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

HASH_BITS = 64
_HASH_W, _HASH_H = 9, 8

# How two different works relate (exact copies are one work, never a pair).
RelationKind = Literal["near_duplicate", "related"]


def perceptual_hash(pixels: np.ndarray) -> int:
    """The 64-bit dHash of a picture array [H, W, 3] (or [H, W]), as a signed 64-bit integer
    (PostgreSQL's bigint)."""
    grey = np.asarray(pixels, dtype=np.float32)
    if grey.ndim == 3:
        # The channel mean as a matrix-vector product: numpy's mean down the strided channel
        # axis is ~7x slower, and this runs on every request and every ingested picture.
        grey = grey @ np.full(grey.shape[2], 1.0 / grey.shape[2], np.float32)
    small = np.asarray(
        Image.fromarray(np.ascontiguousarray(grey), mode="F").resize(
            (_HASH_W, _HASH_H), Image.Resampling.BOX
        )
    )
    # Row by row, left to right, the first comparison the most significant bit.
    value = int.from_bytes(np.packbits(small[:, :-1] < small[:, 1:]).tobytes(), "big")
    return value - (1 << 64) if value >= 1 << 63 else value


def hamming(a: int, b: int) -> int:
    """Bits that differ between two 64-bit hashes (signed or not)."""
    return ((a ^ b) & ((1 << 64) - 1)).bit_count()


@dataclass(frozen=True)
class DuplicateThresholds:
    min_similarity: float  # near duplicate: cosine similarity at least this ...
    max_hamming: int  # ... and perceptual hashes at most this many bits apart
    related_min_similarity: float  # related: at least this similar, not a near duplicate
    source: Literal["card", "defaults"] = "defaults"

    @classmethod
    def from_card(cls, serving: Mapping[str, Any] | None) -> DuplicateThresholds:
        """`serving.duplicates` of a card; each value falls back to DEFAULTS when absent or out
        of range."""
        given = (serving or {}).get("duplicates")
        if not isinstance(given, Mapping):
            return DEFAULTS

        def number(name: str, low: float, high: float, default: float) -> float:
            value = given.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return default
            return float(value) if low <= value <= high else default

        return cls(
            min_similarity=number("min_similarity", 0.0, 1.0, DEFAULTS.min_similarity),
            max_hamming=int(number("max_hamming", 0, HASH_BITS, DEFAULTS.max_hamming)),
            related_min_similarity=number(
                "related_min_similarity", 0.0, 1.0, DEFAULTS.related_min_similarity
            ),
            source="card",
        )

    def judge(self, similarity: float, distance: int | None) -> RelationKind | None:
        """near_duplicate, related or None for a neighbour this similar, its hash `distance`
        bits away (None: its hash is unknown, so it can be related but never a duplicate)."""
        if (similarity >= self.min_similarity and distance is not None
                and distance <= self.max_hamming):
            return "near_duplicate"
        if similarity >= self.related_min_similarity:
            return "related"
        return None


# Used only when the card has no `serving.duplicates`: conservative (few false duplicates).
DEFAULTS = DuplicateThresholds(min_similarity=0.9, max_hamming=12, related_min_similarity=0.8)
