"""The corpus as documents of tokenized sentences, packed into flat arrays.

Input format (google-research/bert's): one sentence per line, a blank line
between documents. Lines whose text tokenizes to nothing are dropped, and so
are documents left empty. Unlike google-research/bert, which keeps appending
to the last document when a new file starts, every file starts a new
document: separate files are separate texts.

The packed layout keeps every sentence of a document contiguous, so any run
of consecutive sentences is one ``[start, end)`` range of ``token_ids``; the
instance builder works with ranges only and never copies tokens in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bert_trainer.prepare import vocab
from bert_trainer.prepare.words import Words


@dataclass(frozen=True)
class Corpus:
    token_ids: npt.NDArray[np.int32]
    """Every sentence's WordPiece ids, back to back."""
    sentence_starts: npt.NDArray[np.int64]
    """Sentence ``i`` is ``token_ids[sentence_starts[i]:sentence_starts[i + 1]]``."""
    document_starts: npt.NDArray[np.int64]
    """Document ``d`` is sentences ``document_starts[d]`` to ``document_starts[d + 1] - 1``."""

    @property
    def num_documents(self) -> int:
        return len(self.document_starts) - 1

    @property
    def num_sentences(self) -> int:
        return len(self.sentence_starts) - 1

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    def select(self, keep: npt.NDArray[np.bool_]) -> Corpus:
        """The corpus of the documents where ``keep`` is true, in order."""
        documents = np.flatnonzero(keep)
        first, end = self.document_starts[documents], self.document_starts[documents + 1]
        per_document = end - first
        sentences = _ranges(first, per_document)
        lengths = np.diff(self.sentence_starts)[sentences]
        tokens = _ranges(self.sentence_starts[sentences], lengths)
        return Corpus(
            self.token_ids[tokens],
            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
            np.concatenate([[0], np.cumsum(per_document)]).astype(np.int64),
        )

    def document_tokens(self) -> npt.NDArray[np.int64]:
        """Tokens per document."""
        starts = self.sentence_starts[self.document_starts]
        return np.diff(starts)


def _ranges(starts: npt.NDArray[np.int64], counts: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The indices ``starts[i], ..., starts[i] + counts[i] - 1`` of every i, back to back."""
    before = np.cumsum(counts) - counts
    return (np.repeat(starts - before, counts) + np.arange(int(counts.sum()))).astype(np.int64)


def split_lines(text: str) -> list[str]:
    """Stripped lines, blank ones kept (they separate documents)."""
    # Only newlines end a sentence, as with readline(); splitlines() would also
    # split at form feeds and U+2028, which can sit inside a sentence.
    return [line.strip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


@dataclass(frozen=True)
class Sentences:
    """The corpus' non-blank lines and the document each belongs to."""

    text: list[str]
    document: list[int]
    """Nondecreasing; a new number starts at every blank line and every file."""


def split_documents(texts: Iterable[str]) -> Sentences:
    """Sentences of whole files (each one str), with their document numbers."""
    sentences: list[str] = []
    document_of_sentence: list[int] = []
    document = 0
    for text in texts:
        document += 1
        for line in split_lines(text):
            if line:
                sentences.append(line)
                document_of_sentence.append(document)
            else:
                document += 1
    return Sentences(sentences, document_of_sentence)


def tokenize_corpus(sentences: Sentences, words: Words, tokens: Sequence[str]) -> Corpus:
    """WordPiece-tokenize the corpus: each distinct word once, then spread by numpy."""
    return pack(sentences.document, *sentence_tokens(words, tokens))


def sentence_tokens(
    words: Words, tokens: Sequence[str]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """The WordPiece ids of every sentence of ``words``, back to back, and ids per sentence."""
    piece_ids, piece_count = vocab.wordpiece(words.distinct, tokens)
    piece_start = np.cumsum(piece_count) - piece_count

    count = piece_count[words.codes]
    out_start = np.cumsum(count) - count
    source = np.repeat(piece_start[words.codes] - out_start, count) + np.arange(int(count.sum()))
    token_ids = piece_ids[source].astype(np.int32)

    tokens_before_word = np.concatenate([[0], np.cumsum(count)])
    words_before_sentence = np.concatenate([[0], np.cumsum(words.per_sentence)])
    length = np.diff(tokens_before_word[words_before_sentence]).astype(np.int64)
    return token_ids, length


def pack(
    document_of_sentence: Sequence[int],
    token_ids: npt.NDArray[np.int32],
    length: npt.NDArray[np.int64],
) -> Corpus:
    """The Corpus of sentences with these documents, ids (back to back) and id counts."""
    # Sentences that tokenize to nothing are dropped, as in google-research/bert.
    kept = length > 0
    sentence_starts = np.concatenate([[0], np.cumsum(length[kept])]).astype(np.int64)
    documents = np.asarray(document_of_sentence, dtype=np.int64)[kept]
    first_of_document = np.flatnonzero(np.diff(documents)) + 1
    document_starts = np.concatenate(
        [[0], first_of_document, [len(documents)]] if len(documents) else [[0]]
    ).astype(np.int64)
    return Corpus(token_ids.astype(np.int32, copy=False), sentence_starts, document_starts)
