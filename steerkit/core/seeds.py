"""Seed derivation: one hash turns (seed, label) into an independent 64-bit seed.

Design note: a per-item seed must not depend on batch composition or order, so it is derived from the run seed
and the item's id (or a source's label) with SHA-256, never drawn from a shared generator. (`generation.row_seed`
is this value shifted right by one bit, the 63-bit seed torch generators take.)
"""

from __future__ import annotations

import hashlib


def derive_seed(seed: int, label: str) -> int:
    """A 64-bit seed for `label` under run seed `seed`: the first 8 bytes of sha256("<seed>:<label>"), little-endian."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{label}".encode()).digest()[:8], "little")


__all__ = ["derive_seed"]
