"""Compiled loops for the records pass: numba's ``njit``, typed for mypy, cached on disk.

Why compiled code: the steps that turn text into framed records were numpy
over whole batches or one C call per batch, and 20x google-research/bert's
create_pretraining_data needed about 30 % less CPU than that (docs/benchmarks.md,
benchmark 1). Each row's work is a short data-dependent loop: a varint, a walk
over sentence offsets, a partial shuffle of at most ``max_seq_length``
candidates, the bytes of one word. numpy pays for that in temporary
``(rows, width)`` matrices, and Python in one object per word; a compiled loop
pays for neither. Measured in one process on the benchmark's 20 MiB corpus:
word splitting and interning 1.84 -> 0.62 CPU-s, pairs 0.55 -> 0.08, masking
0.94 -> 0.29, TFRecord framing 1.34 -> 0.64.

Why numba: it is a pip wheel (no compiler in the image or on CI); it draws
from a ``np.random.Generator`` inside compiled code, from the same stream as
numpy, so a task keeps one seeded generator; and the kernels stay Python
source that the tests call directly. Compiled machine code is cached on disk
(``cache=True``: ``__pycache__`` beside the source, or ``NUMBA_CACHE_DIR``);
``kernels`` says how a pass loads it before it forks its pool and how the
trainer image ships it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, cast

import llvmlite.binding
import numba

_F = TypeVar("_F", bound=Callable[..., Any])


def kernel(function: _F) -> _F:
    """``function`` compiled in nopython mode on its first call, cached on disk if it can be."""
    # error_model="numpy": a division by zero gives inf instead of a check on every
    # division; boundscheck stays off (numba's default).
    return _njit(function, nogil=True, error_model="numpy")


def inline(function: _F) -> _F:
    """A helper of kernels, inlined into each kernel that calls it."""
    return _njit(function, inline="always")


def c_function(library: str, name: str, signature: Any) -> Any:
    """C function ``name`` of the shared object ``library`` (or of what it links), for kernels.

    Bound by symbol name when a kernel is linked, so a cached kernel stays valid
    in a process whose library is mapped elsewhere.
    """
    llvmlite.binding.load_library_permanently(library)
    return numba.types.ExternalFunction(name, signature)


def _njit(function: _F, **options: Any) -> _F:
    try:
        return cast(_F, numba.njit(cache=True, **options)(function))
    except RuntimeError:
        # numba found no writable cache directory (a read-only root filesystem
        # without NUMBA_CACHE_DIR): compile in every process instead of failing.
        return cast(_F, numba.njit(cache=False, **options)(function))
