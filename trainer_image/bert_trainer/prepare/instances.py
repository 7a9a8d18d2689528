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
is what makes this loop cheap: it only does arithmetic on sentence offsets.
"""

from __future__ import annotations

import random
from bisect import bisect_left
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

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
    """The corpus offsets as Python lists: indexing them is ~10x faster than numpy scalars."""

    sentence_starts: list[int]
    document_starts: list[int]

    @property
    def num_documents(self) -> int:
        return len(self.document_starts) - 1


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
    rng: random.Random,
) -> Pairs:
    """The pairs of documents ``[first_document, end_document)``, in document order."""
    # The hottest Python loop of prepare: locals only, and integer draws as
    # low + int(random() * span), ~5x cheaper than randint (bias below 2**-50).
    starts = layout.sentence_starts
    documents = layout.document_starts
    num_documents = layout.num_documents
    max_tokens = max_seq_length - 3
    draw = rng.random
    rows: list[tuple[int, int, int, int, bool]] = []
    append = rows.append

    for document in range(first_document, end_document):
        first, end = documents[document], documents[document + 1]
        target = max_tokens
        if draw() < short_seq_prob:
            target = 2 + int(draw() * (max_tokens - 1))

        chunk_first = first
        i = first
        while i < end:
            if i == end - 1 or starts[i + 1] - starts[chunk_first] >= target:
                chunk_size = i - chunk_first + 1
                a_end = chunk_first + (1 + int(draw() * (chunk_size - 1)) if chunk_size > 1 else 1)
                a_start = starts[chunk_first]
                a_length = starts[a_end] - a_start
                if chunk_size == 1 or draw() < 0.5:
                    is_random_next = True
                    # Tried 10 times, as the original does, so one document still works.
                    for _ in range(10):
                        other = int(draw() * num_documents)
                        if other != document:
                            break
                    other_first, other_end = documents[other], documents[other + 1]
                    b_first = other_first + int(draw() * (other_end - other_first))
                    b_start = starts[b_first]
                    b_end = bisect_left(starts, b_start + target - a_length, b_first + 1, other_end)
                    b_length = starts[b_end] - b_start
                    i = a_end - 1  # put the unused sentences back
                else:
                    is_random_next = False
                    b_start = starts[a_end]
                    b_length = starts[i + 1] - b_start
                if a_length + b_length > max_tokens:
                    cut_a, cut_b = truncation_counts(a_length, b_length, max_tokens)
                    if cut_a:
                        a_start += _heads(rng, cut_a)
                        a_length -= cut_a
                    if cut_b:
                        b_start += _heads(rng, cut_b)
                        b_length -= cut_b
                append((a_start, a_length, b_start, b_length, is_random_next))
                chunk_first = i + 1
            i += 1

    table = np.array(rows, dtype=np.int64).reshape(-1, 5)
    return Pairs(
        a_start=table[:, 0],
        a_length=table[:, 1],
        b_start=table[:, 2],
        b_length=table[:, 3],
        is_random_next=table[:, 4].astype(bool),
    )


def _heads(rng: random.Random, flips: int) -> int:
    """How many of ``flips`` fair coins land heads: a Binomial(flips, 1/2) draw."""
    return rng.getrandbits(flips).bit_count()
