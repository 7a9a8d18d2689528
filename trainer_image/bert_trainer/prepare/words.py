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

``split_words`` splits a batch of sentences with one compiled loop over the
UTF-8 bytes of their joined text (``_intern_words``), which finds the words,
counts them per line and interns them in one go: a regex call per sentence
cost 1.8 s of a 7.7 s single-process ``prepare`` of 20 MiB; a regex call per
batch, dict interning and a lookup per word 0.66 s for 10 MiB; the loop 0.1 s.
Non-ASCII lines are split first (tokenizers) and rejoined by spaces, which the
loop splits back into exactly those words (a property test checks it).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from tokenizers import normalizers, pre_tokenizers

from bert_trainer.prepare import compiled

# BERT's punctuation includes every non-alphanumeric printable ASCII character.
_ASCII_WORD = re.compile(r"[A-Za-z0-9]+|[!-/:-@\[-`{-~]")
# Control characters BERT deletes (tab, newline and carriage return are whitespace).
_ASCII_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
# BERT's punctuation among ASCII characters.
_ASCII_PUNCTUATION = re.compile(r"[!-/:-@\[-`{-~]")
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
    data = np.frombuffer(text.encode(), dtype=np.uint8)
    codes, per_sentence, distinct_lines = _intern_words(data, _BYTE_CLASS)
    # One decode and one split for all distinct words: each ends with a newline.
    distinct = distinct_lines.tobytes().decode().split("\n")[:-1]
    return Words(distinct=distinct, codes=codes, per_sentence=per_sentence)


def _byte_classes() -> npt.NDArray[np.uint8]:
    """What each byte of the joined text's UTF-8 is to ``_intern_words``.

    On the joined text a word is a run of anything but ASCII whitespace and
    punctuation (ASCII letters and digits, or a pre-split non-ASCII word), or
    one ASCII punctuation character. A code point beyond ASCII is all bytes of
    0x80 and above in UTF-8, so classes of bytes are classes of code points.
    """
    classes = np.full(256, _WORD, dtype=np.uint8)
    for space in " \t\r":
        classes[ord(space)] = _SPACE
    classes[ord("\n")] = _NEWLINE
    for code in range(128):
        if _ASCII_PUNCTUATION.fullmatch(chr(code)):
            classes[code] = _PUNCTUATION
    return classes


_WORD, _SPACE, _NEWLINE, _PUNCTUATION = 0, 1, 2, 3
_BYTE_CLASS = _byte_classes()


@compiled.kernel
def _intern_words(
    data: npt.NDArray[np.uint8], byte_class: npt.NDArray[np.uint8]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64], npt.NDArray[np.uint8]]:
    """The words of ``data`` (see ``_byte_classes``), interned in order of first appearance.

    Returns each word's code, the words per line (each newline ends one), and
    the distinct words, each followed by a newline. An open-addressing
    table of FNV-1a hashes replaces findall, dict.fromkeys and the code lookup
    (0.66 s of 0.76 s for 10 MiB of text; this loop takes 0.08 s).
    """
    n = len(data)
    codes = np.empty(n, dtype=np.int32)
    per_line = np.empty(n + 1, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    size = np.empty(n, dtype=np.int64)
    # Grown (doubled) at half full; small to start with, as most batches hold far
    # fewer distinct words than bytes.
    slots = 1 << 12
    table = np.full(slots, -1, dtype=np.int64)
    words = distinct = lines = 0
    in_line = 0
    i = 0
    while i < n:
        kind = byte_class[data[i]]
        if kind == 1:  # space
            i += 1
            continue
        if kind == 2:  # newline
            per_line[lines] = in_line
            lines += 1
            in_line = 0
            i += 1
            continue
        start = i
        i += 1
        if kind == 0:
            while i < n and byte_class[data[i]] == 0:
                i += 1
        length = i - start
        h = np.uint64(14695981039346656037)
        for k in range(start, i):
            h = (h ^ np.uint64(data[k])) * np.uint64(1099511628211)
        slot = np.int64(h & np.uint64(slots - 1))
        while True:
            code = table[slot]
            if code < 0:
                if distinct * 2 >= slots:
                    # Grow: rehash every distinct word into a table twice the size.
                    slots <<= 1
                    table = np.full(slots, -1, dtype=np.int64)
                    for c in range(distinct):
                        g = np.uint64(14695981039346656037)
                        for k in range(first[c], first[c] + size[c]):
                            g = (g ^ np.uint64(data[k])) * np.uint64(1099511628211)
                        s = np.int64(g & np.uint64(slots - 1))
                        while table[s] >= 0:
                            s = (s + 1) & (slots - 1)
                        table[s] = c
                    slot = np.int64(h & np.uint64(slots - 1))
                    continue
                table[slot] = distinct
                first[distinct] = start
                size[distinct] = length
                code = distinct
                distinct += 1
                break
            if size[code] == length:
                same = True
                for k in range(length):
                    if data[first[code] + k] != data[start + k]:
                        same = False
                        break
                if same:
                    break
            slot = (slot + 1) & (slots - 1)
        codes[words] = code
        words += 1
        in_line += 1
    distinct_lines = np.empty(size[:distinct].sum() + distinct, dtype=np.uint8)
    at = 0
    for c in range(distinct):
        distinct_lines[at : at + size[c]] = data[first[c] : first[c] + size[c]]
        distinct_lines[at + size[c]] = 10  # "\n"
        at += size[c] + 1
    return codes[:words].copy(), per_line[:lines].copy(), distinct_lines


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
