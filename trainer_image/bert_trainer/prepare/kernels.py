"""Load every compiled kernel of ``prepare`` into this process, before its pools fork.

numba compiles a kernel (or loads it from its cache) on the kernel's first call,
in each process. ``load`` makes those first calls here, with the argument types
the passes use, so the workers a pass then forks inherit the machine code: left
to the workers, every one of them paid the load (0.5-0.8 s each on this machine)
inside every pass.

Compiling all of them takes about 13 s on this machine; loading them from the
cache about 0.3 s. The trainer image compiles them when it is built, for a
generic x86-64 CPU (``NUMBA_CPU_NAME=generic``, as fast here as this CPU's own
target), into ``$BERT_TRAINER_KERNEL_CACHE``; a pod's cache directory
(``NUMBA_CACHE_DIR``, under its writable ``/tmp``) starts as a copy of it, so no
pod compiles.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from typing import Any

import numpy as np

from bert_trainer.prepare import instances, masking, tfrecord, words

log = logging.getLogger(__name__)

ENV_KERNEL_CACHE = "BERT_TRAINER_KERNEL_CACHE"
"""A read-only directory of kernels compiled ahead (the image's), copied to NUMBA_CACHE_DIR."""
# numba dispatchers (their .stats count cache hits and misses), typed as what they wrap.
_KERNELS: tuple[Any, ...] = (
    words._intern_words,
    instances._pairs,
    masking._mask_rows,
    tfrecord._encode,
)


@functools.cache
def load() -> None:
    """Call each kernel once on a tiny input of the real argument types."""
    _seed_cache()
    _first_calls()
    compiled = sum(sum(k.stats.cache_misses.values()) for k in _KERNELS)
    log.info("loaded compiled kernels", extra={"kernels": len(_KERNELS), "compiled": compiled})


def _seed_cache() -> None:
    seed, cache = os.environ.get(ENV_KERNEL_CACHE), os.environ.get("NUMBA_CACHE_DIR")
    if seed and cache and os.path.isdir(seed):
        shutil.copytree(seed, cache, dirs_exist_ok=True)


def _first_calls() -> None:
    words.split_words(["A tiny, line.", "and another"], lowercase=True)
    layout = instances.Layout(
        sentence_starts=np.arange(0, 25, 5, dtype=np.int64),
        document_starts=np.array([0, 2, 4], dtype=np.int64),
    )
    rng = np.random.Generator(np.random.PCG64(0))
    pairs = instances.build_pairs(layout, 0, 2, max_seq_length=16, short_seq_prob=0.1, rng=rng)
    special = masking.SpecialIds(
        cls=1, sep=2, mask=3, vocab_size=8, is_continuation=np.zeros(8, dtype=bool)
    )
    for whole_word_masking in (False, True):
        batch = masking.make_instances(
            np.full(20, 5, dtype=np.int32),
            pairs,
            special,
            max_seq_length=16,
            max_predictions_per_seq=4,
            masked_lm_prob=0.15,
            whole_word_masking=whole_word_masking,
            rng=rng,
        )
        tfrecord.encode_records(batch.features())
