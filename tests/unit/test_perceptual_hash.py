"""The 64-bit dHash (artlens.duplicates.perceptual_hash): its bit order, its sign, and that it
is the hash of the picture, not of how its channels are laid out."""

from __future__ import annotations

import numpy as np

from artlens.duplicates import hamming, perceptual_hash


def ramp(width: int = 90, height: int = 64, rising: bool = True) -> np.ndarray:
    row = np.linspace(0.0, 1.0, width, dtype=np.float32)
    grey = np.tile(row if rising else row[::-1], (height, 1))
    return np.repeat(grey[:, :, None], 3, axis=2)


def test_brighter_to_the_right_sets_every_bit_and_darker_none():
    assert perceptual_hash(ramp(rising=True)) == -1  # 64 ones, as a signed bigint
    assert perceptual_hash(ramp(rising=False)) == 0
    assert hamming(perceptual_hash(ramp(rising=True)), perceptual_hash(ramp(rising=False))) == 64


def test_the_first_comparison_is_the_most_significant_bit():
    # A 9 x 8 picture hashes cell by cell: only the top-left pair rises.
    cells = np.zeros((8, 9), np.float32)
    cells[0, 1] = 1.0
    value = perceptual_hash(np.repeat(cells[:, :, None], 3, axis=2))
    assert value == -(1 << 63)  # bit 63 alone, signed
    assert perceptual_hash(cells) == value  # a grey [H, W] array hashes the same


def test_the_hash_is_the_mean_of_the_channels():
    rng = np.random.default_rng(3)
    pixels = rng.random((160, 160, 3)).astype(np.float32)
    assert perceptual_hash(pixels) == perceptual_hash(pixels.mean(axis=2))
