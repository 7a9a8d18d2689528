"""The steps the preparation's passes share: tokenize a chunk, count words, the vocab.

``passes`` composes them into the passes of the Indexed Jobs, and ``fragments``
turns a tokenized chunk into its records. Word splitting and WordPiece run on
the pod's process pool (``parallel``); results come back in order, so what a
step produces never depends on the number of processes.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bert_trainer import storage
from bert_trainer.config import PrepareConfig
from bert_trainer.prepare import documents, masking, parallel, source, vocab, words
from bert_trainer.storage import InputError

log = logging.getLogger(__name__)

WORDS_CHUNK = 1 << 14
"""Fewest sentences per task: smaller work runs in this process."""
TOKENIZE_TASK = 1 << 18
"""Most sentences per tokenizing task (about 25 MiB of text)."""


def tokenize_chunk(
    chunk: source.Chunk, lowercase: bool, tokens: list[str], workers: int
) -> tuple[documents.Corpus, int]:
    """The chunk's corpus, and how many non-blank lines it had.

    The sentences are split into words and WordPiece-tokenized on the pool, in
    ranges of at most TOKENIZE_TASK sentences: only the ids come back, which
    made this step 2x faster in wall time on 2 cores than merging the words of
    every range first and tokenizing their distinct words here. A range
    WordPiece-tokenizes its own distinct words; the ids of a word do not depend
    on its range, so the corpus is the same for any number of processes.
    """
    sentences = documents.split_documents(source.read_chunk(chunk))
    n = len(sentences.text)
    if workers <= 1 or n <= WORDS_CHUNK:
        token_ids, lengths = documents.sentence_tokens(
            words.split_words(sentences.text, lowercase=lowercase), tokens
        )
    else:
        with parallel.pool(_Sentences(sentences.text, lowercase, tokens), workers) as imap:
            parts = list(imap(_tokenize_task, _ranges(n, workers)))
        token_ids = np.concatenate([ids for ids, _ in parts])
        lengths = np.concatenate([length for _, length in parts])
    return documents.pack(sentences.document, token_ids, lengths), n


def count_words(
    chunks: Sequence[source.Chunk], lowercase: bool, workers: int
) -> tuple[dict[str, int], int]:
    """Every word's count over ``chunks``, in order of first appearance, and the line count.

    One chunk's text at a time; what is kept is the table of counts only. The
    pool's ranges each return their own table, merged here in range order as they
    arrive (which keeps first appearance): returning every range's interned words
    and merging them all first took a 256 MiB chunk's count pass to 2.1 GiB.
    """
    counts: dict[str, int] = {}
    lines = 0
    get = counts.get
    for chunk in chunks:
        sentences = documents.split_documents(source.read_chunk(chunk))
        lines += len(sentences.text)
        for distinct, numbers in _range_counts(sentences.text, lowercase, workers):
            for word, n in zip(distinct, numbers, strict=True):
                counts[word] = get(word, 0) + n
        del sentences
    return counts, lines


def expand(patterns: Sequence[str]) -> list[str]:
    files: list[str] = []
    for pattern in patterns:
        matched = storage.glob(pattern)
        if not matched:
            raise InputError(f"the corpus pattern {pattern} matches no file")
        files.extend(matched)
    return files


@dataclass(frozen=True)
class _Sentences:
    text: list[str]
    lowercase: bool
    tokens: list[str] | None = None


def _range_counts(
    sentences: list[str], lowercase: bool, workers: int
) -> Iterator[tuple[list[str], list[int]]]:
    """Each range's distinct words (first appearance) and their counts, in range order."""
    n = len(sentences)
    if workers <= 1 or n <= WORDS_CHUNK:
        yield _counts_of(words.split_words(sentences, lowercase=lowercase))
        return
    with parallel.pool(_Sentences(sentences, lowercase), workers) as imap:
        yield from imap(_count_task, _ranges(n, workers))


def _ranges(n: int, workers: int) -> list[tuple[int, int]]:
    """Ranges of at most TOKENIZE_TASK sentences, at least WORDS_CHUNK, about n / workers."""
    size = max(WORDS_CHUNK, min(-(-n // workers), TOKENIZE_TASK))
    return list(itertools.pairwise([*range(0, n, size), n]))


def _count_task(bounds: tuple[int, int]) -> tuple[list[str], list[int]]:
    shared = parallel.state()
    assert isinstance(shared, _Sentences)
    start, end = bounds
    return _counts_of(words.split_words(shared.text[start:end], lowercase=shared.lowercase))


def _counts_of(found: words.Words) -> tuple[list[str], list[int]]:
    numbers: list[int] = found.counts().tolist()
    return found.distinct, numbers


def _tokenize_task(
    bounds: tuple[int, int],
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    shared = parallel.state()
    assert isinstance(shared, _Sentences) and shared.tokens is not None
    start, end = bounds
    found = words.split_words(shared.text[start:end], lowercase=shared.lowercase)
    return documents.sentence_tokens(found, shared.tokens)


def given_vocab(config: PrepareConfig) -> list[str]:
    """The given vocab's tokens, copied byte for byte to ``output_vocab``."""
    assert config.vocab is not None
    raw = storage.read_bytes(config.vocab)
    try:
        tokens = vocab.parse_vocab(raw.decode("utf-8"), config.vocab)
    except UnicodeDecodeError as e:
        raise InputError(f"vocab {config.vocab} is not UTF-8 text") from e
    # Copied byte for byte: later stages compare vocab files.
    storage.write_bytes(config.output_vocab, raw)
    return tokens


def train_and_write_vocab(config: PrepareConfig, counts: dict[str, int], lines: int) -> list[str]:
    """WordPiece trained on the corpus' word counts (first-appearance order), written out."""
    if lines == 0:
        raise InputError(f"the corpus {', '.join(config.corpus)} holds no text")
    log.info("counted words", extra={"distinct_words": len(counts), "lines": lines})
    tokens = vocab.train_vocab(
        list(counts),
        list(counts.values()),
        vocab_size=config.vocab_size,
        min_frequency=config.min_frequency,
    )
    storage.write_text(config.output_vocab, vocab.vocab_text(tokens))
    log.info("trained vocab", extra={"vocab_size": len(tokens)})
    return tokens


def special_ids(tokens: list[str]) -> masking.SpecialIds:
    ids = vocab.token_ids(tokens)
    return masking.SpecialIds(
        cls=ids[vocab.CLS],
        sep=ids[vocab.SEP],
        mask=ids[vocab.MASK],
        vocab_size=len(tokens),
        is_continuation=np.array(
            [t.startswith(vocab.CONTINUATION_PREFIX) for t in tokens], dtype=bool
        ),
    )
