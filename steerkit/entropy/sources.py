"""Entropy sources for the seed-004 experiments: 32-bit seeds and counter-mode byte streams.

Design note: every source answers the same two questions, `seeds(n)` (32-bit sampling seeds) and
`stream(label)` (an arbitrary-length `ByteStream`), and is named in the string registry `SOURCES` so an MLflow
parameter can pick it. A stream is always counter-mode: block i = SHA-256(key || label || i), with a 32-byte
key drawn from the source. The reference hashed the same input again and again and so repeated one 32-byte
block; a counter never repeats, so neither does a block (tested). The source's own randomness enters through
the key, which `ByteStream.key_hex` exposes so a run can log it and replay a stream exactly, even one keyed
from OS randomness. `fixed` is the control: its seeds and keys never change.
Sources: `mt` (Python's Mersenne Twister, seeded), `os` (`secrets`/`os.urandom`), `sha256_mix` (SHA-256 of
time + OS randomness + a counter), `pcg64` (numpy PCG64, seeded), `fixed` (constant seed and key).
`fork(label)` gives an independent source per prompt for the `multi_stream` design.
KS helpers compare seed distributions against uniform and between sources.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from steerkit.core.seeds import derive_seed
from steerkit.errors import SteerkitError

BLOCK_BYTES = 32
KEY_BYTES = 32
_U32 = 2**32


class ByteStream:
    """Counter-mode byte stream: block i = SHA-256(key || len(label) || label || i as 8 little-endian bytes).

    `read(n)` returns the next n bytes; no 32-byte block repeats within a stream (the counter differs), and
    streams with different keys or labels are unrelated.
    """

    def __init__(self, key: bytes, label: str) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise SteerkitError(f"stream key must be at least 16 bytes, got {key!r}")
        self.key, self.label = key, label
        encoded = label.encode()
        self._prefix = hashlib.sha256(key + len(encoded).to_bytes(4, "little") + encoded)
        self.blocks = 0  # next counter value
        self._buffer = b""

    @property
    def key_hex(self) -> str:
        return self.key.hex()

    def read(self, n: int) -> bytes:
        """The next `n` bytes of the stream."""
        if not isinstance(n, int) or n < 0:
            raise SteerkitError(f"read size must be a non-negative integer, got {n!r}")
        missing = n - len(self._buffer)
        if missing > 0:
            count = -(-missing // BLOCK_BYTES)
            self._buffer += b"".join(self._block(i) for i in range(self.blocks, self.blocks + count))
            self.blocks += count
        out, self._buffer = self._buffer[:n], self._buffer[n:]
        return out

    def _block(self, counter: int) -> bytes:
        h = self._prefix.copy()
        h.update(counter.to_bytes(8, "little"))
        return h.digest()

    def uniforms(self, n: int, bits: Literal[32, 53] = 53) -> np.ndarray:
        """`n` float64 uniforms in the open interval (0, 1), from 4 (bits=32) or 8 (bits=53) bytes each."""
        if bits == 32:
            u32 = np.frombuffer(self.read(4 * n), dtype="<u4").astype(np.float64)
            return (u32 + 0.5) / _U32
        if bits == 53:
            u53 = np.frombuffer(self.read(8 * n), dtype="<u8") >> np.uint64(11)
            return (u53.astype(np.float64) + 0.5) / 2.0**53
        raise SteerkitError(f"bits must be 32 or 53, got {bits!r}")


class EntropySource(ABC):
    """A named source of randomness: raw bytes, 32-bit seeds and keyed byte streams."""

    name: str = ""
    reproducible: bool = False  # same seed -> same output

    @abstractmethod
    def raw(self, n: int) -> bytes:
        """`n` bytes of the source's own randomness."""

    @abstractmethod
    def fork(self, label: str) -> EntropySource:
        """An independent source for `label` (reproducible sources derive their seed from it)."""

    def seeds(self, n: int) -> list[int]:
        """`n` 32-bit seeds (default: 4 raw bytes each, little-endian)."""
        _check_n(n)
        data = self.raw(4 * n)
        return [int.from_bytes(data[4 * i : 4 * i + 4], "little") for i in range(n)]

    def stream(self, label: str) -> ByteStream:
        """A counter-mode stream keyed with 32 bytes of this source's randomness."""
        return ByteStream(self.raw(KEY_BYTES), label)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "reproducible": self.reproducible}


def _check_n(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise SteerkitError(f"count must be a non-negative integer, got {n!r}")


class MersenneSource(EntropySource):
    """Python's `random.Random` (MT19937) seeded with `seed`."""

    name, reproducible = "mt", True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = random.Random(seed)

    def raw(self, n: int) -> bytes:
        _check_n(n)
        return self._rng.randbytes(n)

    def seeds(self, n: int) -> list[int]:
        _check_n(n)
        return [self._rng.getrandbits(32) for _ in range(n)]

    def fork(self, label: str) -> EntropySource:
        return MersenneSource(derive_seed(self.seed, label))


class OSSource(EntropySource):
    """Operating-system randomness (`os.urandom`, `secrets`): not reproducible, so log what it gives."""

    name = "os"

    def raw(self, n: int) -> bytes:
        _check_n(n)
        return os.urandom(n)

    def seeds(self, n: int) -> list[int]:
        _check_n(n)
        return [secrets.randbits(32) for _ in range(n)]

    def fork(self, label: str) -> EntropySource:
        return OSSource()


class SHA256MixSource(EntropySource):
    """SHA-256 of (nanosecond time, 16 bytes of OS randomness, a counter), one 32-byte block per counter value."""

    name = "sha256_mix"

    def __init__(self) -> None:
        self._counter = itertools.count()

    def raw(self, n: int) -> bytes:
        _check_n(n)
        blocks = -(-n // BLOCK_BYTES)
        return b"".join(self._block() for _ in range(blocks))[:n]

    def _block(self) -> bytes:
        material = time.time_ns().to_bytes(8, "little") + os.urandom(16) + next(self._counter).to_bytes(8, "little")
        return hashlib.sha256(material).digest()

    def fork(self, label: str) -> EntropySource:
        return SHA256MixSource()


class PCG64Source(EntropySource):
    """numpy's PCG64 generator seeded with `seed`."""

    name, reproducible = "pcg64", True

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.Generator(np.random.PCG64(seed))

    def raw(self, n: int) -> bytes:
        _check_n(n)
        return self._rng.bytes(n)

    def seeds(self, n: int) -> list[int]:
        _check_n(n)
        return [int(x) for x in self._rng.integers(0, _U32, size=n, dtype=np.uint64)]

    def fork(self, label: str) -> EntropySource:
        return PCG64Source(derive_seed(self.seed, label))


class FixedSource(EntropySource):
    """The control: every seed is `seed` and every call to `raw` returns the same bytes (so every stream key)."""

    name, reproducible = "fixed", True

    def __init__(self, seed: int = 42) -> None:
        if not 0 <= seed < _U32:
            raise SteerkitError(f"fixed seed must be a 32-bit unsigned integer, got {seed!r}")
        self.seed = seed

    def raw(self, n: int) -> bytes:
        _check_n(n)
        return ByteStream(hashlib.sha256(f"fixed:{self.seed}".encode()).digest(), "fixed").read(n)

    def seeds(self, n: int) -> list[int]:
        _check_n(n)
        return [self.seed] * n

    def fork(self, label: str) -> EntropySource:
        return self


SOURCES: dict[str, Callable[[int], EntropySource]] = {
    "mt": MersenneSource,
    "os": lambda seed: OSSource(),
    "sha256_mix": lambda seed: SHA256MixSource(),
    "pcg64": PCG64Source,
    "fixed": lambda seed: FixedSource(42),
}


def make_source(name: str, seed: int = 0) -> EntropySource:
    """The source registered as `name`; seeded sources use `seed` (`fixed` always uses 42)."""
    if name not in SOURCES:
        raise SteerkitError(f"unknown entropy source {name!r} (choose from {', '.join(SOURCES)})")
    return SOURCES[name](seed)


def parse_sources(value: str) -> list[str]:
    """Comma-separated source names, validated, duplicates refused."""
    names = [v.strip() for v in value.split(",") if v.strip()]
    if not names:
        raise SteerkitError(f"sources must name at least one source, got {value!r}")
    for name in names:
        make_source(name)
    if len(set(names)) != len(names):
        raise SteerkitError(f"sources lists a source twice: {value!r}")
    return names


def repeated_blocks(data: bytes, block: int = BLOCK_BYTES) -> int:
    """How many aligned `block`-byte blocks of `data` repeat an earlier one (0 for a sound stream)."""
    chunks = [data[i : i + block] for i in range(0, len(data) - block + 1, block)]
    return len(chunks) - len(set(chunks))


@dataclass(frozen=True)
class KSResult:
    """A Kolmogorov-Smirnov test: `a` against uniform (`b` empty) or `a` against `b`."""

    a: str
    b: str
    statistic: float
    p_value: float
    n_a: int
    n_b: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ks_uniform(name: str, seeds: Sequence[int]) -> KSResult:
    """KS test of 32-bit seeds (scaled to [0, 1)) against the uniform distribution."""
    if len(seeds) < 1:
        raise SteerkitError(f"ks_uniform needs at least one seed for {name!r}")
    res = sps.kstest(np.asarray(seeds, dtype=np.float64) / _U32, "uniform")
    return KSResult(name, "uniform", float(res.statistic), float(res.pvalue), len(seeds), 0)


def ks_two_sample(a: str, seeds_a: Sequence[int], b: str, seeds_b: Sequence[int]) -> KSResult:
    """Two-sample KS test between the seed distributions of two sources."""
    if len(seeds_a) < 1 or len(seeds_b) < 1:
        raise SteerkitError(f"ks_two_sample needs seeds from both {a!r} and {b!r}")
    res = sps.ks_2samp(np.asarray(seeds_a, dtype=np.float64), np.asarray(seeds_b, dtype=np.float64))
    return KSResult(a, b, float(res.statistic), float(res.pvalue), len(seeds_a), len(seeds_b))


def compare_seed_distributions(samples: Mapping[str, Sequence[int]]) -> list[KSResult]:
    """Each source against uniform, then every pair of sources (two-sample KS)."""
    results = [ks_uniform(name, seeds) for name, seeds in samples.items()]
    names = list(samples)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            results.append(ks_two_sample(a, samples[a], b, samples[b]))
    return results
