"""glibc's heap settings for the preparation: big blocks mapped apart, few arenas.

The preparation allocates and frees hundreds of MB per chunk (sentences, words,
task batches) from several threads (tokenizers' Rust pool, storage transfers).
With glibc's defaults the mmap threshold rises to 32 MiB as big blocks are
freed, so later big arrays come from the heap, which fragments and keeps what
each chunk freed. Measured on a records pass over a 1 GiB corpus in 32 MiB
chunks (2 processes), peak PSS of the process tree per chunk:

- defaults: outside tokenizing 230 MiB at the first chunk, 470 at the last;
  within it 390 and 930. A worker's peak grew with the corpus.
- these settings (blocks of 4 MiB or more mapped apart, trim above 64 MiB, 2
  arenas): 170-230 MiB and 310-550 MiB, from the first chunk to the last. The
  20 MiB run of benchmark 1 took 3.8 s instead of 4.1 s.
- trim threshold 0 (every free at the top returned) flattened it too, but cost
  20 % more CPU (5.0 s): fixing one threshold turns the dynamic mmap threshold
  off, and at its 128 KiB default every batch array is a fresh mapping.

``mallopt`` applies to this process and to the pool processes it forks later,
so the settings need no environment variable in the pod spec.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD = 4 << 20
"""Allocations of at least this many bytes get their own mapping, unmapped on free."""
TRIM_THRESHOLD = 64 << 20
"""Free memory above this at the heap's top goes back to the system."""
ARENA_MAX = 2


def configure() -> bool:
    """Apply the settings; False where the C library is not glibc (nothing changes)."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.info("no glibc mallopt: the heap keeps its defaults")
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(option, value)
        for option, value in (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
    )
