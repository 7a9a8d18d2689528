"""The WordPiece vocabulary: trained with HuggingFace tokenizers, or read from a vocab.txt.

A vocab is a list of tokens whose positions are their ids, exactly as
google-research/bert's ``vocab.txt`` (one token per line, line number = id).
The tokenizer built here reproduces google-research/bert's ``FullTokenizer``
(BasicTokenizer + WordpieceTokenizer) with tokenizers' Rust implementation.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from bert_trainer.storage import InputError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, CLS, SEP, MASK)
"""Trained vocabs start with these, so ``[PAD]`` is id 0 as in Google's vocabs."""
CONTINUATION_PREFIX = "##"
MAX_INPUT_CHARS_PER_WORD = 100
"""Longer words become ``[UNK]``, as in google-research/bert's WordpieceTokenizer."""
LIMIT_ALPHABET = 1000
"""Rare characters beyond this many become ``[UNK]``; HF's BertWordPieceTokenizer default."""
_ENCODE_BATCH = 1 << 16
_REPEAT_BYTES = 1 << 16
"""Characters per string fed to the trainer. tokenizers buffers a few hundred of them at a
time, so this (not the words' counts) bounds the memory of the feed."""


def train_vocab(
    words: Sequence[str], counts: Sequence[int], *, vocab_size: int, min_frequency: int
) -> list[str]:
    """Train a WordPiece vocab on word counts; the special tokens come first, in order.

    ``words`` are already normalized and split (``words.split_words``), so the
    trainer only splits on spaces: it sees the same word counts as it would on
    raw text through BertNormalizer + BertPreTokenizer, at a fraction of the cost.
    """
    alphabet, continuations = _alphabet(words, counts)
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        # tokenizers numbers the ## pieces of single characters in hash-map order,
        # and its merges break ties by id, so the same corpus could give different
        # vocabs (huggingface/tokenizers#1794). Naming them up front, sorted, and
        # fixing the alphabet makes training deterministic.
        special_tokens=[*SPECIAL_TOKENS, *continuations],
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        continuing_subword_prefix=CONTINUATION_PREFIX,
        show_progress=False,
    )
    tokenizer.train_from_iterator(_repeated(words, counts), trainer)
    by_id = sorted(tokenizer.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
    tokens = [token for token, _ in by_id]
    if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise RuntimeError(f"tokenizers put the special tokens elsewhere: {tokens[:8]}")
    return tokens


def _alphabet(words: Sequence[str], counts: Sequence[int]) -> tuple[list[str], list[str]]:
    """The LIMIT_ALPHABET most frequent characters, and the ## pieces of those seen inside words.

    Ties are broken by code point, unlike tokenizers' own (unstable) choice.
    """
    by_count: dict[int, list[str]] = {}
    for word, count in zip(words, counts, strict=True):
        by_count.setdefault(count, []).append(word)
    # Counting joined strings keeps the per-character loop in C.
    frequency: Counter[str] = Counter()
    for count, group in by_count.items():
        for char, n in Counter("".join(group)).items():
            frequency[char] += n * count
    inner = set("".join(word[1:] for word in words))
    ranked = sorted(frequency, key=lambda c: (-frequency[c], c))[:LIMIT_ALPHABET]
    alphabet = sorted(ranked)
    continuations = [CONTINUATION_PREFIX + c for c in alphabet if c in inner]
    return alphabet, continuations


def wordpiece(
    words: Sequence[str], tokens: Sequence[str]
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
    """WordPiece ids of each (normalized) word: all ids back to back, and ids per word."""
    tokenizer = Tokenizer(_wordpiece_model(tokens))
    lengths = np.zeros(len(words), dtype=np.int64)
    chunks: list[npt.NDArray[np.int32]] = []
    for start in range(0, len(words), _ENCODE_BATCH):
        batch = list(words[start : start + _ENCODE_BATCH])
        # One pre-tokenized sequence per batch: its word_ids say which word each id is
        # of. 2.3x faster than one Encoding per word (encode_batch_fast), same ids.
        encoding = tokenizer.encode(batch, is_pretokenized=True, add_special_tokens=False)
        word_of_id = np.array(encoding.word_ids, dtype=np.int64)
        lengths[start : start + len(batch)] = np.bincount(word_of_id, minlength=len(batch))
        chunks.append(np.array(encoding.ids, dtype=np.int32))
    flat = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int32)
    return flat, lengths


def parse_vocab(text: str, source: str) -> list[str]:
    """The tokens of a vocab.txt, read like google-research/bert's ``load_vocab``."""
    # Only newlines end a token (str.splitlines would also split at U+2028 and the like).
    lines = text.replace("\r\n", "\n").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    tokens = [line.strip() for line in lines]
    missing = [t for t in SPECIAL_TOKENS if t not in tokens]
    if missing:
        raise InputError(f"vocab {source} lacks the special tokens {', '.join(missing)}")
    return tokens


def vocab_text(tokens: Sequence[str]) -> str:
    return "".join(f"{t}\n" for t in tokens)


def token_ids(tokens: Sequence[str]) -> dict[str, int]:
    """Token to id; a duplicated token keeps its last id, as google-research/bert does."""
    return {token: i for i, token in enumerate(tokens)}


def build_tokenizer(tokens: Sequence[str], *, lowercase: bool) -> Tokenizer:
    """A tokenizer equivalent to google-research/bert's ``FullTokenizer`` for this vocab.

    ``prepare`` itself uses :func:`wordpiece` on interned words instead; this is
    the reference it must agree with, and a tokenizer other stages may export.
    """
    tokenizer = Tokenizer(_wordpiece_model(tokens))
    # strip_accents=None follows `lowercase`, like Google's BasicTokenizer(do_lower_case).
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return tokenizer


def _wordpiece_model(tokens: Sequence[str]) -> models.Model:
    return models.WordPiece(
        vocab=token_ids(tokens),
        unk_token=UNK,
        max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
        continuing_subword_prefix=CONTINUATION_PREFIX,
    )


def _repeated(words: Sequence[str], counts: Sequence[int]) -> Iterator[str]:
    """Each word as often as it occurs, in strings of at most about _REPEAT_BYTES characters."""
    for word, count in zip(words, counts, strict=True):
        per_string = max(1, _REPEAT_BYTES // (len(word) + 1))
        for start in range(0, count, per_string):
            yield (word + " ") * min(per_string, count - start)
