"""The one seed derivation: every random draw in segrank comes from `rng(...)`.

A draw is identified by (seed, model, unit, repeat, purpose), where unit names the image or
block. The identity is hashed (not Python's salted `hash`) into a numpy SeedSequence, so the
same identity gives the same numbers on any machine, scheduler, thread count or provider.
"""
from __future__ import annotations

import hashlib

import numpy as np


def seed_words(seed: int, *parts: object) -> list[int]:
    """Stable 32-bit words derived from the seed and any printable identity parts."""
    text = "\x1f".join([str(int(seed))] + [str(p) for p in parts])
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return [int.from_bytes(digest[i : i + 4], "little") for i in range(0, 32, 4)]


def rng(seed: int, model: str, unit: str, repeat: int, purpose: str) -> np.random.Generator:
    """Generator for one draw of `purpose` (e.g. "noise", "dropout") for (model, unit, repeat)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed_words(seed, model, unit, repeat, purpose))))
