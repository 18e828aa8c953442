"""Seeds of this project: every derived seed (an episode's, a sample's, a worker's) comes from one function of
the parts it depends on, the same in every process and on every machine."""

from __future__ import annotations

import zlib
from typing import Any


def stable_seed(*parts: Any) -> int:
    """A 63-bit integer that depends only on ``parts`` (not on Python's per-process hash salt)."""
    h1 = zlib.crc32(repr(parts).encode())
    h2 = zlib.adler32(repr(parts[::-1]).encode())
    return ((h1 << 31) ^ h2) & 0x7FFF_FFFF_FFFF_FFFF
