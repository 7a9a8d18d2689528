"""Fixtures for trainer tests: a small synthetic corpus and prepare configs around it."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from bert_trainer.config import PrepareConfig

_ONSETS = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ea", "ou"]
_CODAS = ["", "", "", "", "n", "r", "s", "t", "l", "nd", "ng"]
_SUFFIXES = ["", "", "", "ing", "ed", "s", "ly", "tion", "ness", "able"]


def _word_pool(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        syllables = rng.choice([1, 1, 1, 2, 2, 3])
        stem = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )
        words.add(stem + rng.choice(_SUFFIXES))
    ordered = sorted(words)
    rng.shuffle(ordered)
    return ordered


def synthetic_corpus(num_documents: int, seed: int = 7) -> str:
    """English-like text: Zipf-distributed words, one sentence per line, blank-line documents.

    Long invented words make WordPiece split them into ``##`` pieces, which the
    whole-word-masking tests rely on.
    """
    rng = random.Random(seed)
    pool = _word_pool(rng, 3000)
    cumulative = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(pool))))
    documents = []
    for _ in range(num_documents):
        sentences = []
        for _ in range(rng.randint(2, 14)):
            words = rng.choices(pool, cum_weights=cumulative, k=rng.randint(4, 24))
            words[0] = words[0].capitalize()
            if len(words) > 8 and rng.random() < 0.5:
                words[rng.randint(2, len(words) - 3)] += ","
            sentences.append(" ".join(words) + rng.choice([".", ".", ".", "?", "!"]))
        documents.append("\n".join(sentences))
    return "\n\n".join(documents) + "\n"


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two files, 300 documents in all (about 110 KB)."""
    directory = tmp_path_factory.mktemp("corpus")
    (directory / "part-a.txt").write_text(synthetic_corpus(180, seed=1))
    (directory / "part-b.txt").write_text(synthetic_corpus(120, seed=2))
    return directory


PrepareConfigFactory = Callable[..., PrepareConfig]


def small_prepare_config(corpus_dir: Path, out_dir: Path, **overrides: Any) -> PrepareConfig:
    """A PrepareConfig over ``corpus_dir`` that runs in about a second; keywords override."""
    fields: dict[str, Any] = {
        "corpus": [str(corpus_dir / "*.txt")],
        "vocab_size": 800,
        "max_seq_length": 64,
        "max_predictions_per_seq": 10,
        "dupe_factor": 2,
        "num_shards": 3,
        "workers": 2,
        "output_vocab": str(out_dir / "vocab.txt"),
        "output_tfrecords": str(out_dir / "tfrecords"),
    }
    fields.update(overrides)
    return PrepareConfig(**fields)


@pytest.fixture
def prepare_config(corpus_dir: Path, tmp_path: Path) -> PrepareConfigFactory:
    """``small_prepare_config`` writing under this test's ``tmp_path / "out"``."""

    def make(**overrides: Any) -> PrepareConfig:
        return small_prepare_config(corpus_dir, tmp_path / "out", **overrides)

    return make


# --- The prepare passes ------------------------------------------------------------------

TINY_CHUNK = 8 << 10
"""A chunk size that cuts ``corpus_dir`` into about 14 chunks."""


def pass_config(corpus_dir: Path, out_dir: Path, **overrides: Any) -> PrepareConfig:
    """``small_prepare_config`` in tiny chunks, 4 shards, one process, a work dir in ``out_dir``."""
    fields: dict[str, Any] = {
        "chunk_bytes": TINY_CHUNK,
        "work_dir": str(out_dir / "work"),
        "num_shards": 4,
        "workers": 1,
    }
    return small_prepare_config(corpus_dir, out_dir, **{**fields, **overrides})


def run_passes(config: PrepareConfig, pods: int | Mapping[str, int], order_seed: int = 0) -> None:
    """Every pass, each index run on its own in a shuffled order, as the pods of Jobs would.

    ``pods``: of every parallel pass, or per pass (plan and vocab always have one).
    """
    from bert_trainer import contract
    from bert_trainer.prepare.passes import run_pass

    rng = random.Random(order_seed)
    for prepare_pass in contract.PREPARE_PASSES:
        if prepare_pass in ("plan", "vocab"):
            n = 1
        else:
            n = pods if isinstance(pods, int) else pods[prepare_pass]
        indexes = list(range(n))
        rng.shuffle(indexes)
        for index in indexes:
            run_pass(config, prepare_pass, index, n)


def prepare_outputs(config: PrepareConfig) -> dict[str, bytes]:
    """The shards and the vocab a preparation wrote, by file name."""
    files = {
        p.name: p.read_bytes() for p in sorted(Path(config.output_tfrecords).glob("*.tfrecord"))
    }
    files["vocab.txt"] = Path(config.output_vocab).read_bytes()
    return files
