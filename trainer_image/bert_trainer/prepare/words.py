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

``split_words`` splits a batch of sentences with one regex call over their
joined text, newlines included as words that mark the sentence ends: one call
per sentence cost 1.8 s of a 7.7 s single-process ``prepare`` of 20 MiB, one
call per batch 0.9 s. Non-ASCII lines are split first (tokenizers) and rejoined
by spaces, which the same regex splits back into exactly those words.
"""

from __future__ import annotations

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
# On joined text: _ASCII_WORD's words, pre-split words separated by spaces (they hold
# no whitespace, and ASCII punctuation only alone), and each newline as a word.
_JOINED_WORD = re.compile(r"[^ \t\n\r!-/:-@\[-`{-~]+|[!-/:-@\[-`{-~]|\n")
_BATCH_SENTENCES = 1 << 14
"""Sentences per regex call: bounds the list of word objects alive at once."""


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
    """Every sentence's words (``bert_words``), interned in order of first appearance."""
    batches = range(0, len(sentences), _BATCH_SENTENCES)
    return merge_words(
        [_split_batch(sentences[i : i + _BATCH_SENTENCES], lowercase) for i in batches]
    )


def _split_batch(sentences: Sequence[str], lowercase: bool) -> Words:
    if not sentences:
        return Words([], np.zeros(0, np.int32), np.zeros(0, np.int64))
    lines = [s.lower() for s in sentences] if lowercase else list(sentences)
    # Non-ASCII lines are replaced by tokenizers' words for them.
    others = [i for i, s in enumerate(sentences) if not s.isascii()]
    joined = _joined_words([sentences[i] for i in others], lowercase)
    for i, line in zip(others, joined, strict=True):
        lines[i] = line
    # The last newline ends the last sentence; pre-split words hold no control characters.
    text = "\n".join(lines) + "\n"
    if _ASCII_CONTROL.search(text):
        text = _ASCII_CONTROL.sub("", text)
    every_word = _JOINED_WORD.findall(text)
    # dict.fromkeys and map(dict.__getitem__) intern in C: first appearance sets the code.
    distinct = list(dict.fromkeys(every_word))
    code = {word: i for i, word in enumerate(distinct)}
    codes = np.fromiter(map(code.__getitem__, every_word), np.int32, count=len(every_word))
    newline = code["\n"]
    ends = np.flatnonzero(codes == newline)
    per_sentence = np.diff(ends, prepend=-1) - 1
    codes = codes[codes != newline]
    codes[codes > newline] -= 1
    del distinct[newline]
    return Words(distinct=distinct, codes=codes, per_sentence=per_sentence.astype(np.int64))


def merge_words(parts: Sequence[Words]) -> Words:
    """The Words of consecutive runs of sentences, as ``split_words`` of all of them gives."""
    if len(parts) == 1:
        return parts[0]
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


def _joined_words(lines: list[str], lowercase: bool) -> list[str]:
    """Each line's words (tokenizers' normalizer and pre-tokenizer), joined by spaces.

    One call of each for all the lines, joined by a punctuation character none of
    them holds (a word of its own that nothing normalizes into): per line, the two
    calls cost 35 us, which made 3 % of non-ASCII lines 15 % of the splitting.
    """
    if not lines:
        return []
    text = "\n".join(lines)
    separator = next((c for c in _SEPARATORS if c not in text), None)
    if separator is not None:
        normalized = _normalizer(lowercase).normalize_str(separator.join(lines))
        words = [word for word, _ in _PRE_TOKENIZER.pre_tokenize_str(normalized)]
        joined = [part.strip() for part in " ".join(words).split(separator)]
        if len(joined) == len(lines):
            return joined
    return [" ".join(bert_words(line, lowercase=lowercase)) for line in lines]


# Dashes of Unicode's Supplemental Punctuation block: category P, no
# decomposition, no case; the first that no line holds joins the lines.
_SEPARATORS = "\u2e3b\u2e3a\u2e1a\u2e40\u2e5d"
_PRE_TOKENIZER = pre_tokenizers.BertPreTokenizer()
_NORMALIZERS = {
    lowercase: normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    for lowercase in (False, True)
}


def _normalizer(lowercase: bool) -> normalizers.Normalizer:
    return _NORMALIZERS[lowercase]
