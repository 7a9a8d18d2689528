"""BERT's basic tokenization (clean, lowercase, split into words), fast for ASCII.

google-research/bert's BasicTokenizer is what tokenizers' ``BertNormalizer``
and ``BertPreTokenizer`` implement, but they track character alignments and
spend most of ``prepare``'s time doing it. On ASCII text the same rules
reduce to: drop control characters, lowercase, and take runs of letters and
digits and single punctuation characters as words, which one regex does in C.
Lines with any non-ASCII character still go through tokenizers' own
normalizer and pre-tokenizer, so the result is always theirs (a test compares
the two paths).

Words are interned: each distinct word is WordPiece-tokenized (and counted
for vocab training) once, and the corpus keeps an int32 code per occurrence.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import normalizers, pre_tokenizers

# BERT's punctuation includes every non-alphanumeric printable ASCII character.
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")
# Control characters BERT deletes (tab, newline and carriage return are whitespace).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass(frozen=True)
class Words:
    distinct: list[str]
    """Every distinct word, in order of first appearance."""
    codes: npt.NDArray[np.int32]
    """Every word of the corpus as an index into ``distinct``."""
    per_sentence: npt.NDArray[np.int64]
    """How many of ``codes`` each sentence has."""

    def counts(self) -> npt.NDArray[np.int64]:
        """Occurrences of each distinct word."""
        return np.bincount(self.codes, minlength=len(self.distinct)).astype(np.int64)


def bert_words(text: str, *, lowercase: bool) -> list[str]:
    """One line's words, exactly as BertNormalizer + BertPreTokenizer produce them."""
    if text.isascii():
        if _ASCII_CONTROL.search(text):
            text = _ASCII_CONTROL.sub("", text)
        return _ASCII_WORD.findall(text.lower() if lowercase else text)
    normalized = _normalizer(lowercase).normalize_str(text)
    return [word for word, _ in _PRE_TOKENIZER.pre_tokenize_str(normalized)]


def split_words(sentences: Sequence[str], *, lowercase: bool) -> Words:
    per_sentence = [bert_words(sentence, lowercase=lowercase) for sentence in sentences]
    every_word = list(itertools.chain.from_iterable(per_sentence))
    # dict.fromkeys and map(dict.__getitem__) intern in C: first appearance sets the code.
    distinct = list(dict.fromkeys(every_word))
    code = {word: i for i, word in enumerate(distinct)}
    return Words(
        distinct=distinct,
        codes=np.fromiter(map(code.__getitem__, every_word), np.int32, count=len(every_word)),
        per_sentence=np.fromiter(map(len, per_sentence), np.int64, count=len(per_sentence)),
    )


def merge_words(parts: Sequence[Words]) -> Words:
    """The Words of consecutive runs of sentences, as ``split_words`` of all of them gives."""
    index: dict[str, int] = {}
    codes = []
    for part in parts:
        # setdefault keeps first-appearance order, so the result equals one sequential pass.
        global_code = np.fromiter(
            (index.setdefault(word, len(index)) for word in part.distinct),
            dtype=np.int32,
            count=len(part.distinct),
        )
        codes.append(global_code[part.codes])
    return Words(
        distinct=list(index),
        codes=np.concatenate(codes) if codes else np.zeros(0, np.int32),
        per_sentence=np.concatenate([p.per_sentence for p in parts])
        if parts
        else np.zeros(0, np.int64),
    )


_PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()
_NORMALIZERS = {
    lowercase: normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    for lowercase in (False, True)
}


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    return _NORMALIZERS[lowercase]
