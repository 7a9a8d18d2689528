"""Sentence pairs for next-sentence prediction, as in google-research/bert.

For each document, with target length ``max_seq_length - 3`` (or, with
probability ``short_seq_prob``, a random one in ``[2, max_seq_length - 3]``),
consecutive sentences are gathered until they reach the target; a random
number of them form segment A, the rest segment B (actual next). With
probability 0.5, or when the chunk holds a single sentence, B instead comes
from a random other document starting at a random sentence (random next), and
the chunk's unused sentences are put back for the next pair. The pair is then
truncated to ``max_seq_length - 3`` tokens, one token at a time from the longer
segment, at its front or back with even odds.

Segments are ``[start, start + length)`` ranges of ``Corpus.token_ids``, which
is what makes this loop cheap: it only does arithmetic on sentence offsets. It
is compiled (``compiled``), with scalar draws from the task's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bert_trainer.prepare import compiled

IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Pairs:
    """Segment ranges of one batch of instances (one row per instance)."""

    a_start: IntArray
    a_length: IntArray
    b_start: IntArray
    b_length: IntArray
    is_random_next: npt.NDArray[np.bool_]

    def __len__(self) -> int:
        return len(self.a_start)

    def take(self, rows: IntArray) -> Pairs:
        return Pairs(
            a_start=self.a_start[rows],
            a_length=self.a_length[rows],
            b_start=self.b_start[rows],
            b_length=self.b_length[rows],
            is_random_next=self.is_random_next[rows],
        )


@dataclass(frozen=True)
class Layout:
    """The corpus offsets: where each sentence and each document starts (one past the end last)."""

    sentence_starts: IntArray
    """Token offset of each sentence in ``Corpus.token_ids``."""
    document_starts: IntArray
    """Sentence index of each document."""

    @property
    def num_documents(self) -> int:
        return len(self.document_starts) - 1


@compiled.inline
def truncation_counts(a_length: int, b_length: int, max_tokens: int) -> tuple[int, int]:
    """Tokens google-research/bert's ``truncate_seq_pair`` removes from A and from B.

    It removes one token at a time from the longer segment (B on a tie) until
    the pair fits; which segment loses a token never depends on the coin
    flips, so the counts have a closed form.
    """
    excess = a_length + b_length - max_tokens
    if excess <= 0:
        return 0, 0
    if a_length > b_length:
        gap = a_length - b_length
        if excess <= gap:
            return excess, 0
        rest = excess - gap
        # Equal lengths now: B loses first, then they alternate.
        return gap + rest // 2, (rest + 1) // 2
    gap = b_length - a_length + 1
    if excess <= gap:
        return 0, excess
    rest = excess - gap
    # A is longer by one now: A loses first, then they alternate.
    return (rest + 1) // 2, gap + rest // 2


def build_pairs(
    layout: Layout,
    first_document: int,
    end_document: int,
    *,
    max_seq_length: int,
    short_seq_prob: float,
    rng: np.random.Generator,
) -> Pairs:
    """The pairs of documents ``[first_document, end_document)``, in document order."""
    table, is_random_next = _pairs(
        np.ascontiguousarray(layout.sentence_starts, dtype=np.int64),
        np.ascontiguousarray(layout.document_starts, dtype=np.int64),
        first_document,
        end_document,
        max_seq_length - 3,
        short_seq_prob,
        rng,
    )
    # One contiguous row per column: the masking kernel is compiled for contiguous arrays.
    a_start, a_length, b_start, b_length = table
    return Pairs(a_start, a_length, b_start, b_length, is_random_next)


@compiled.kernel
def _pairs(
    starts: IntArray,
    documents: IntArray,
    first_document: int,
    end_document: int,
    max_tokens: int,
    short_seq_prob: float,
    rng: np.random.Generator,
) -> tuple[IntArray, npt.NDArray[np.bool_]]:
    num_documents = len(documents) - 1
    # Every pair uses up at least one sentence of its document.
    capacity = documents[end_document] - documents[first_document]
    table = np.empty((4, capacity), dtype=np.int64)
    is_random_next = np.empty(capacity, dtype=np.bool_)
    rows = 0
    for document in range(first_document, end_document):
        first, end = documents[document], documents[document + 1]
        target = max_tokens
        if rng.random() < short_seq_prob:
            target = 2 + int(rng.random() * (max_tokens - 1))

        chunk_first = first
        i = first
        while i < end:
            if i == end - 1 or starts[i + 1] - starts[chunk_first] >= target:
                chunk_size = i - chunk_first + 1
                a_end = chunk_first + 1
                if chunk_size > 1:
                    a_end += int(rng.random() * (chunk_size - 1))
                a_start = starts[chunk_first]
                a_length = starts[a_end] - a_start
                random_next = chunk_size == 1 or rng.random() < 0.5
                if random_next:
                    # Tried 10 times, as the original does, so one document still works.
                    other = document
                    for _ in range(10):
                        other = int(rng.random() * num_documents)
                        if other != document:
                            break
                    other_first, other_end = documents[other], documents[other + 1]
                    b_first = other_first + int(rng.random() * (other_end - other_first))
                    b_start = starts[b_first]
                    # The first sentence end at or past the wanted length (bisect_left).
                    b_end = (
                        b_first
                        + 1
                        + np.searchsorted(
                            starts[b_first + 1 : other_end], b_start + target - a_length
                        )
                    )
                    b_length = starts[b_end] - b_start
                    i = a_end - 1  # put the unused sentences back
                else:
                    b_start = starts[a_end]
                    b_length = starts[i + 1] - b_start
                if a_length + b_length > max_tokens:
                    cut_a, cut_b = truncation_counts(a_length, b_length, max_tokens)
                    # Each token is cut from the front or the back with even odds.
                    if cut_a:
                        a_start += rng.binomial(cut_a, 0.5)
                        a_length -= cut_a
                    if cut_b:
                        b_start += rng.binomial(cut_b, 0.5)
                        b_length -= cut_b
                table[0, rows] = a_start
                table[1, rows] = a_length
                table[2, rows] = b_start
                table[3, rows] = b_length
                is_random_next[rows] = random_next
                rows += 1
                chunk_first = i + 1
            i += 1
    return table[:, :rows].copy(), is_random_next[:rows].copy()
