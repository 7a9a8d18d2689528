"""``prepare``: google-research/bert's pretraining records, with its masking and pairing rules."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import normalizers, pre_tokenizers

from bert_trainer import contract, storage
from bert_trainer.__main__ import main
from bert_trainer.prepare import (
    PrepareResult,
    documents,
    instances,
    masking,
    run_prepare,
    tfrecord,
    vocab,
    words,
)
from bert_trainer.prepare.steps import special_ids
from bert_trainer.storage import InputError
from tests.trainer.conftest import PrepareConfigFactory, small_prepare_config

MAX_SEQ, MAX_PRED = 64, 10
Arrays = dict[str, npt.NDArray[Any]]


def google_feature_spec(max_seq_length: int, max_predictions_per_seq: int) -> dict[str, Any]:
    """The spec of google-research/bert's run_pretraining.py ``input_fn_builder``."""
    import tensorflow as tf

    return {
        "input_ids": tf.io.FixedLenFeature([max_seq_length], tf.int64),
        "input_mask": tf.io.FixedLenFeature([max_seq_length], tf.int64),
        "segment_ids": tf.io.FixedLenFeature([max_seq_length], tf.int64),
        "masked_lm_positions": tf.io.FixedLenFeature([max_predictions_per_seq], tf.int64),
        "masked_lm_ids": tf.io.FixedLenFeature([max_predictions_per_seq], tf.int64),
        "masked_lm_weights": tf.io.FixedLenFeature([max_predictions_per_seq], tf.float32),
        "next_sentence_labels": tf.io.FixedLenFeature([1], tf.int64),
    }


def parse_with_tensorflow(paths: list[str], max_seq: int, max_pred: int) -> Arrays:
    import tensorflow as tf

    spec = google_feature_spec(max_seq, max_pred)
    # As run_pretraining.py reads them: one parse_single_example per record, then batched.
    dataset = (
        tf.data.TFRecordDataset(paths)
        .map(lambda record: tf.io.parse_single_example(record, spec))
        .batch(4096)
    )
    batches = list(dataset.as_numpy_iterator())
    assert batches, "no records"
    return {name: np.concatenate([b[name] for b in batches]) for name in spec}


def originals(arrays: Arrays) -> npt.NDArray[np.int64]:
    """input_ids before masking: the masked_lm_ids put back at their positions."""
    ids = arrays["input_ids"].copy()
    rows, slots = np.nonzero(arrays["masked_lm_weights"] > 0)
    ids[rows, arrays["masked_lm_positions"][rows, slots]] = arrays["masked_lm_ids"][rows, slots]
    return ids


@dataclass(frozen=True)
class Prepared:
    result: PrepareResult
    arrays: Arrays
    tokens: list[str]

    def id_of(self, token: str) -> int:
        return self.tokens.index(token)


@pytest.fixture(scope="module")
def prepared(corpus_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    out = tmp_path_factory.mktemp("prepared")
    result = run_prepare(small_prepare_config(corpus_dir, out))
    tokens = (out / "vocab.txt").read_text().splitlines()
    return Prepared(result, parse_with_tensorflow(list(result.shards), MAX_SEQ, MAX_PRED), tokens)


@dataclass(frozen=True)
class SmallCorpus:
    corpus: documents.Corpus
    tokens: list[str]
    special: masking.SpecialIds
    layout: instances.Layout


@pytest.fixture(scope="module")
def small_corpus(corpus_dir: Path) -> SmallCorpus:
    texts = [p.read_text() for p in sorted(corpus_dir.glob("*.txt"))]
    sentences = documents.split_documents(texts)
    corpus_words = words.split_words(sentences.text, lowercase=True)
    tokens = vocab.train_vocab(
        corpus_words.distinct, corpus_words.counts().tolist(), vocab_size=800, min_frequency=2
    )
    corpus = documents.tokenize_corpus(sentences, corpus_words, tokens)
    layout = instances.Layout(corpus.sentence_starts, corpus.document_starts)
    return SmallCorpus(corpus, tokens, special_ids(tokens), layout)


def shard_bytes(result: PrepareResult) -> list[bytes]:
    return [Path(p).read_bytes() for p in result.shards]


# --- The records -------------------------------------------------------------------------


@pytest.mark.tensorflow
def test_records_parse_with_googles_feature_spec(prepared: Prepared) -> None:
    a = prepared.arrays
    n = prepared.result.instances
    assert a["input_ids"].shape == (n, MAX_SEQ)
    assert a["masked_lm_weights"].shape == (n, MAX_PRED)
    assert a["next_sentence_labels"].shape == (n, 1)
    assert [Path(p).name for p in prepared.result.shards] == [
        f"part-0000{i}-of-00003.tfrecord" for i in range(3)
    ]

    cls, sep = prepared.id_of("[CLS]"), prepared.id_of("[SEP]")
    ids = originals(a)
    length = a["input_mask"].sum(axis=1)
    col = np.arange(MAX_SEQ)
    # input_mask: ones then zeros; padding is zeros everywhere.
    assert np.array_equal(a["input_mask"], (col < length[:, None]).astype(np.int64))
    assert not a["input_ids"][col >= length[:, None]].any()
    assert not a["segment_ids"][col >= length[:, None]].any()
    # [CLS] A [SEP] B [SEP], segment ids 0 through the first [SEP] and 1 after it.
    assert (ids[:, 0] == cls).all()
    assert (ids == cls).sum(axis=1).tolist() == [1] * n
    assert (ids == sep).sum(axis=1).tolist() == [2] * n
    assert (ids[np.arange(n), length - 1] == sep).all()
    first_sep = np.argmax(ids == sep, axis=1)
    assert (first_sep >= 2).all() and (first_sep <= length - 3).all(), "empty segment"
    expected_segments = (col > first_sep[:, None]) & (col < length[:, None])
    assert np.array_equal(a["segment_ids"], expected_segments.astype(np.int64))
    assert length.max() <= MAX_SEQ

    # Predictions: sorted positions of real tokens, then zero padding with weight 0.
    weights = a["masked_lm_weights"]
    count = weights.sum(axis=1).astype(int)
    assert np.array_equal(weights, (np.arange(MAX_PRED) < count[:, None]).astype(np.float32))
    positions = a["masked_lm_positions"]
    assert not positions[weights == 0].any() and not a["masked_lm_ids"][weights == 0].any()
    for row in range(n):
        chosen = positions[row, : count[row]]
        assert (np.diff(chosen) > 0).all()
        assert (chosen > 0).all() and (chosen < length[row] - 1).all()
        assert not np.isin(ids[row, chosen], [cls, sep]).any()


@pytest.mark.tensorflow
def test_about_15_percent_of_tokens_are_masked(prepared: Prepared) -> None:
    a = prepared.arrays
    length = a["input_mask"].sum(axis=1)
    count = a["masked_lm_weights"].sum(axis=1).astype(int)
    # google-research/bert's num_to_predict counts [CLS] and [SEP] in the length.
    expected = np.minimum(MAX_PRED, np.maximum(1, np.rint(length * 0.15))).astype(int)
    assert np.array_equal(count, expected)
    fraction = count.sum() / (length - 3).sum()
    assert 0.14 < fraction < 0.19, fraction
    assert prepared.result.masked == count.sum()
    assert prepared.result.tokens == length.sum()


@pytest.mark.tensorflow
def test_masked_tokens_follow_the_80_10_10_rule(prepared: Prepared) -> None:
    a = prepared.arrays
    rows, slots = np.nonzero(a["masked_lm_weights"] > 0)
    shown = a["input_ids"][rows, a["masked_lm_positions"][rows, slots]]
    label = a["masked_lm_ids"][rows, slots]
    is_mask = shown == prepared.id_of("[MASK]")
    kept = ~is_mask & (shown == label)
    other = ~is_mask & ~kept
    assert len(shown) > 5000
    assert 0.78 < is_mask.mean() < 0.82, is_mask.mean()
    assert 0.085 < kept.mean() < 0.115, kept.mean()
    assert 0.085 < other.mean() < 0.115, other.mean()
    # Random replacements come from the whole vocab, not just the corpus' frequent words.
    assert len(np.unique(shown[other])) > 0.5 * len(prepared.tokens)


@pytest.mark.tensorflow
def test_next_sentence_labels_are_about_half_random(prepared: Prepared) -> None:
    labels = prepared.arrays["next_sentence_labels"][:, 0]
    assert set(labels.tolist()) == {0, 1}
    # Above one half: a chunk of a single sentence always takes a random next.
    assert 0.45 < labels.mean() < 0.65, labels.mean()
    assert prepared.result.random_next == labels.sum()


def test_instances_are_dealt_evenly_over_the_shards(
    prepare_config: PrepareConfigFactory,
) -> None:
    result = run_prepare(prepare_config(num_shards=4, dupe_factor=1))
    counts = [len(list(tfrecord.read_records(data))) for data in shard_bytes(result)]
    assert sum(counts) == result.instances
    assert max(counts) - min(counts) <= 1


# --- Determinism -------------------------------------------------------------------------


def test_output_depends_on_the_seed_only(prepare_config: PrepareConfigFactory) -> None:
    first = run_prepare(prepare_config(dupe_factor=1, workers=2))
    first_bytes = shard_bytes(first)
    first_vocab = Path(prepare_config().output_vocab).read_bytes()

    again = run_prepare(prepare_config(dupe_factor=1, workers=1))
    assert shard_bytes(again) == first_bytes, "worker count changed the output"
    assert Path(prepare_config().output_vocab).read_bytes() == first_vocab

    other = run_prepare(prepare_config(dupe_factor=1, workers=2, seed=54321))
    assert other.instances > 0
    assert shard_bytes(other) != first_bytes


# --- Pairs (google-research/bert's create_instances_from_document) -------------------------


def truncate_like_google(a: int, b: int, max_tokens: int) -> tuple[int, int]:
    """Tokens truncate_seq_pair removes from A and B, by running its loop."""
    cut_a = cut_b = 0
    while a + b > max_tokens:
        if a > b:
            a, cut_a = a - 1, cut_a + 1
        else:
            b, cut_b = b - 1, cut_b + 1
    return cut_a, cut_b


def test_truncation_counts_match_googles_loop() -> None:
    for a in range(1, 40):
        for b in range(1, 40):
            for max_tokens in range(2, 60):
                assert instances.truncation_counts(a, b, max_tokens) == truncate_like_google(
                    a, b, max_tokens
                ), (a, b, max_tokens)


def test_pairs_follow_googles_chunking(small_corpus: SmallCorpus) -> None:
    max_seq = 128
    pairs = instances.build_pairs(
        small_corpus.layout,
        0,
        small_corpus.layout.num_documents,
        max_seq_length=max_seq,
        short_seq_prob=0.1,
        rng=np.random.default_rng(3),
    )
    doc_token_starts = small_corpus.corpus.sentence_starts[small_corpus.corpus.document_starts]

    def document(offset: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        return np.searchsorted(doc_token_starts, offset, side="right") - 1

    total = pairs.a_length + pairs.b_length
    assert (pairs.a_length >= 1).all() and (pairs.b_length >= 1).all()
    assert total.max() <= max_seq - 3
    a_doc, b_doc = document(pairs.a_start), document(pairs.b_start)
    actual = ~pairs.is_random_next
    assert (a_doc[actual] == b_doc[actual]).all()
    assert (a_doc[~actual] != b_doc[~actual]).all()
    # Untruncated actual-next pairs: B starts where A ends.
    whole = total < max_seq - 3
    assert (pairs.b_start == pairs.a_start + pairs.a_length)[actual & whole].all()
    # The next pair of a document starts after B, or after A when B was random
    # (the chunk's unused sentences are put back).
    same_doc = a_doc[1:] == a_doc[:-1]
    expected_next = np.where(
        actual, pairs.b_start + pairs.b_length, pairs.a_start + pairs.a_length
    )[:-1]
    check = same_doc & whole[:-1] & whole[1:]
    assert check.sum() > 100
    assert (pairs.a_start[1:][check] == expected_next[check]).all()
    # Every document's first (untruncated) pair starts at the document's first token.
    first_of_doc = np.flatnonzero(np.concatenate([[True], ~same_doc]))
    assert len(first_of_doc) == small_corpus.layout.num_documents
    untruncated = first_of_doc[whole[first_of_doc]]
    assert len(untruncated) > 50
    assert np.array_equal(pairs.a_start[untruncated], doc_token_starts[a_doc[untruncated]])


def test_short_seq_prob_shortens_pairs(small_corpus: SmallCorpus) -> None:
    def mean_length(short_seq_prob: float) -> float:
        pairs = instances.build_pairs(
            small_corpus.layout,
            0,
            small_corpus.layout.num_documents,
            max_seq_length=128,
            short_seq_prob=short_seq_prob,
            rng=np.random.default_rng(5),
        )
        return float((pairs.a_length + pairs.b_length).mean())

    assert mean_length(1.0) < 0.8 * mean_length(0.0)


# --- Whole-word masking ------------------------------------------------------------------


def _mask(small_corpus: SmallCorpus, whole_word_masking: bool) -> masking.Instances:
    pairs = instances.build_pairs(
        small_corpus.layout,
        0,
        small_corpus.layout.num_documents,
        max_seq_length=MAX_SEQ,
        short_seq_prob=0.1,
        rng=np.random.default_rng(11),
    )
    return masking.make_instances(
        small_corpus.corpus.token_ids,
        pairs,
        small_corpus.special,
        max_seq_length=MAX_SEQ,
        max_predictions_per_seq=MAX_PRED,
        masked_lm_prob=0.15,
        whole_word_masking=whole_word_masking,
        rng=np.random.default_rng(11),
    )


def test_whole_word_masking_masks_whole_words(small_corpus: SmallCorpus) -> None:
    special = small_corpus.special
    assert special.is_continuation.sum() > 50, "the test vocab must split words"
    batch = _mask(small_corpus, whole_word_masking=True)
    ids = batch.input_ids.copy()
    valid = batch.masked_lm_weights > 0
    rows, slots = np.nonzero(valid)
    ids[rows, batch.masked_lm_positions[rows, slots]] = batch.masked_lm_ids[rows, slots]
    masked = np.zeros(ids.shape, dtype=bool)
    masked[rows, batch.masked_lm_positions[rows, slots]] = True

    # Words: a piece not starting with ## (and not [CLS]/[SEP]) starts one.
    candidate = (batch.input_mask > 0) & ~np.isin(ids, [special.cls, special.sep])
    pieces_in_words = 0
    for row in range(len(ids)):
        cols = np.flatnonzero(candidate[row])
        starts = ~special.is_continuation[ids[row, cols]]
        starts[0] = True
        word = np.cumsum(starts)
        for w in np.unique(word):
            members = masked[row, cols[word == w]]
            assert members.all() or not members.any(), f"row {row} masks part of a word"
            pieces_in_words += int(members.all() and len(members) > 1)
    assert pieces_in_words > 100, "no multi-piece word was masked"
    # A word that would overflow num_to_predict is skipped, never cut.
    length = batch.input_mask.sum(axis=1)
    limit = np.minimum(MAX_PRED, np.maximum(1, np.rint(length * 0.15)))
    assert (valid.sum(axis=1) <= limit).all()


def test_without_whole_word_masking_pieces_are_masked_alone(small_corpus: SmallCorpus) -> None:
    special = small_corpus.special
    batch = _mask(small_corpus, whole_word_masking=False)
    rows, slots = np.nonzero(batch.masked_lm_weights > 0)
    positions = batch.masked_lm_positions[rows, slots]
    masked = np.zeros(batch.input_ids.shape, dtype=bool)
    masked[rows, positions] = True
    labels = batch.masked_lm_ids[rows, slots]
    lone = special.is_continuation[labels] & ~masked[rows, positions - 1]
    assert lone.sum() > 50


# --- Tokenization and vocab --------------------------------------------------------------


def bert_pipeline_words(text: str, lowercase: bool) -> list[str]:
    normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=lowercase
    )
    normalized = normalizer.normalize_str(text)
    return [w for w, _ in pre_tokenizers.BertPreTokenizer().pre_tokenize_str(normalized)]


@settings(max_examples=300, deadline=None)
@given(
    text=st.text(alphabet=st.characters(max_codepoint=127), max_size=60),
    lowercase=st.booleans(),
)
def test_ascii_fast_path_splits_words_like_tokenizers(text: str, lowercase: bool) -> None:
    assert words.bert_words(text, lowercase=lowercase) == bert_pipeline_words(text, lowercase)


@pytest.mark.parametrize(
    "text",
    [
        "Héllo, Wörld!",
        "東京は晴れ。Tokyo",
        "naïve café\u00a0crème",
        "İstanbul ß ﬁne",
        "a\u200bb—c…",
    ],
)
def test_non_ascii_text_splits_words_like_tokenizers(text: str) -> None:
    for lowercase in (True, False):
        assert words.bert_words(text, lowercase=lowercase) == bert_pipeline_words(text, lowercase)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(
        # Decoded UTF-8 holds no surrogates.
        st.text(
            alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
            max_size=40,
        ),
        max_size=12,
    ),
    lowercase=st.booleans(),
)
def test_split_words_of_a_batch_are_each_lines_words(lines: list[str], lowercase: bool) -> None:
    # split_words joins the lines for one regex call and splits the non-ASCII ones
    # with one tokenizers call: each line must still get exactly its own words.
    found = words.split_words(lines, lowercase=lowercase)
    expected = [bert_pipeline_words(line, lowercase) for line in lines]
    assert found.per_sentence.tolist() == [len(w) for w in expected]
    assert [found.distinct[c] for c in found.codes] == [w for ws in expected for w in ws]


def test_interning_keeps_first_appearance_order_past_the_tables_growth() -> None:
    # The compiled interning table starts at 4,096 slots and doubles at half full:
    # 20,000 distinct words (accented ones too) grow it several times.
    rng = np.random.default_rng(7)
    letters = list("abcdefghijklmnopqrstuvwxyzé0123456789")
    vocabulary = ["".join(rng.choice(letters, size=rng.integers(1, 9))) for _ in range(20_000)]
    lines = [" ".join(rng.choice(vocabulary, size=12)) + "." for _ in range(4_000)]
    found = words.split_words(lines, lowercase=False)
    expected = [bert_pipeline_words(line, False) for line in lines]
    flat = [w for ws in expected for w in ws]
    assert len(found.distinct) > 2_048
    assert found.distinct == list(dict.fromkeys(flat))
    assert [found.distinct[c] for c in found.codes] == flat
    assert found.per_sentence.tolist() == [len(w) for w in expected]


def test_non_ascii_lines_holding_every_separator_split_like_tokenizers() -> None:
    separators = "\u2e3b\u2e3a\u2e1a\u2e40\u2e5d"
    lines = [f"Ünï{separators}cödé", "ÀÉÎ ⸻ wörds", "plain ascii", "中文"]
    found = words.split_words(lines, lowercase=True)
    expected = [bert_pipeline_words(line, True) for line in lines]
    assert [found.distinct[c] for c in found.codes] == [w for ws in expected for w in ws]


def test_words_split_in_parts_merge_like_one_pass(corpus_dir: Path) -> None:
    lines = documents.split_lines((corpus_dir / "part-a.txt").read_text())
    whole = words.split_words(lines, lowercase=False)
    cuts = [0, 7, 500, 501, len(lines) // 2, len(lines)]
    parts = [words.split_words(lines[a:b], lowercase=False) for a, b in itertools.pairwise(cuts)]
    merged = words.merge_words(parts)
    assert merged.distinct == whole.distinct
    assert np.array_equal(merged.codes, whole.codes)
    assert np.array_equal(merged.per_sentence, whole.per_sentence)
    assert any(w[0].isupper() for w in whole.distinct), "lowercase=False lowercased"


def test_corpus_ids_equal_the_full_bert_tokenizer(small_corpus: SmallCorpus) -> None:
    lines = [
        "Hello, World! Don't panic: 42 apples_and-pears.",
        "Ünïcödé wörds and 中文字 mixed in.",
        "x" * 120,  # longer than max_input_chars_per_word: one [UNK]
        "\x01\x02",  # tokenizes to nothing: dropped
        "tab\tseparated\x0bjoined",
    ]
    sentences = documents.Sentences(text=lines, document=[1] * len(lines))
    corpus_words = words.split_words(lines, lowercase=True)
    corpus = documents.tokenize_corpus(sentences, corpus_words, small_corpus.tokens)
    reference = vocab.build_tokenizer(small_corpus.tokens, lowercase=True)
    expected = [e.ids for e in reference.encode_batch(lines) if e.ids]
    assert corpus.num_sentences == len(expected) == 4
    got = [
        corpus.token_ids[s:e].tolist()
        for s, e in zip(corpus.sentence_starts[:-1], corpus.sentence_starts[1:], strict=True)
    ]
    assert got == expected
    assert got[2] == [small_corpus.tokens.index("[UNK]")]


def test_vocab_training_is_deterministic_and_complete(corpus_dir: Path) -> None:
    text = (corpus_dir / "part-b.txt").read_text() + "Ünïcödé wörds, 中文 and ÀÉÎ.\n"
    lines = [line for line in documents.split_lines(text) if line]
    corpus_words = words.split_words(lines, lowercase=True)

    def train() -> list[str]:
        return vocab.train_vocab(
            corpus_words.distinct, corpus_words.counts().tolist(), vocab_size=600, min_frequency=2
        )

    # tokenizers alone numbers pieces in hash-map order, which differs per training.
    tokens = train()
    assert all(train() == tokens for _ in range(3))
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert len(tokens) == len(set(tokens)) <= 600
    characters = set("".join(corpus_words.distinct))
    inner = set("".join(w[1:] for w in corpus_words.distinct))
    assert characters <= set(tokens)
    assert {f"##{c}" for c in inner} <= set(tokens)
    assert "中" in tokens and "à" not in tokens  # accents are stripped when lowercasing
    assert len([t for t in tokens if len(t.removeprefix("##")) > 1]) > 200, "few merges"


def test_prepare_writes_the_trained_vocab(prepare_config: PrepareConfigFactory) -> None:
    config = prepare_config(dupe_factor=1)
    result = run_prepare(config)
    tokens = Path(config.output_vocab).read_text().splitlines()
    assert tokens[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    assert result.vocab_size == len(tokens) <= 800
    assert len(set(tokens)) == len(tokens)


@pytest.mark.tensorflow
def test_a_given_vocab_is_used_and_copied(
    prepare_config: PrepareConfigFactory, small_corpus: SmallCorpus, tmp_path: Path
) -> None:
    # Google's layout: [PAD]=0, [unused0..98], [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103.
    rest = [t for t in small_corpus.tokens if t not in vocab.SPECIAL_TOKENS]
    tokens = ["[PAD]", *(f"[unused{i}]" for i in range(99)), "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += rest
    given_vocab = tmp_path / "given" / "vocab.txt"
    given_vocab.parent.mkdir()
    given_vocab.write_text("\n".join(tokens) + "\n")
    config = prepare_config(vocab=str(given_vocab), vocab_size=50, dupe_factor=1)

    result = run_prepare(config)

    assert Path(config.output_vocab).read_bytes() == given_vocab.read_bytes()
    assert result.vocab_size == len(tokens)
    a = parse_with_tensorflow(list(result.shards), MAX_SEQ, MAX_PRED)
    ids = originals(a)
    assert (ids[:, 0] == 101).all()
    assert ((ids == 102).sum(axis=1) == 2).all()
    rows, slots = np.nonzero(a["masked_lm_weights"] > 0)
    shown = a["input_ids"][rows, a["masked_lm_positions"][rows, slots]]
    assert 0.75 < (shown == 103).mean() < 0.85
    assert ids.max() < len(tokens)
    # The [unused] ids never appear as corpus tokens.
    assert not ((ids >= 1) & (ids < 100)).any()


def test_a_vocab_without_the_special_tokens_is_bad_input(
    prepare_config: PrepareConfigFactory, tmp_path: Path
) -> None:
    bad = tmp_path / "vocab.txt"
    bad.write_text("[PAD]\n[UNK]\n[CLS]\nthe\n")
    with pytest.raises(InputError, match=r"\[SEP\], \[MASK\]"):
        run_prepare(prepare_config(vocab=str(bad)))


# --- Bad input ---------------------------------------------------------------------------


def test_a_pattern_matching_nothing_is_bad_input(
    prepare_config: PrepareConfigFactory, tmp_path: Path
) -> None:
    with pytest.raises(InputError, match="matches no file"):
        run_prepare(prepare_config(corpus=[str(tmp_path / "missing" / "*.txt")]))


def test_an_empty_corpus_is_bad_input(prepare_config: PrepareConfigFactory, tmp_path: Path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n   \n\n")
    with pytest.raises(InputError, match="no text"):
        run_prepare(prepare_config(corpus=[str(empty)]))
    control = tmp_path / "control.txt"
    control.write_text("\x01\x02\n\ufffd\n")
    with pytest.raises(InputError, match="tokenizes to nothing"):
        run_prepare(prepare_config(corpus=[str(control)]))


# --- TFRecord framing --------------------------------------------------------------------


@pytest.mark.tensorflow
def test_encoded_records_round_trip_through_tensorflow() -> None:
    import tensorflow as tf

    rng = np.random.default_rng(0)
    features: dict[str, Any] = {
        "small": rng.integers(0, 2, (50, 7)),
        "wide": rng.integers(0, 1 << 40, (50, 3)),
        "mixed": np.where(rng.random((50, 5)) < 0.5, rng.integers(0, 300, (50, 5)), 1 << 62),
        "floats": rng.random((50, 4)).astype(np.float32),
    }
    data, sizes = tfrecord.encode_records(features)
    assert sizes.sum() == len(data)
    records = list(tfrecord.read_records(data))
    assert len(records) == 50
    spec = {
        name: tf.io.FixedLenFeature([v.shape[1]], tf.float32 if v.dtype.kind == "f" else tf.int64)
        for name, v in features.items()
    }
    for row, record in enumerate(records):
        parsed = tf.io.parse_single_example(record, spec)
        for name, value in features.items():
            np.testing.assert_array_equal(parsed[name].numpy(), value[row])
        # Byte-identical to TensorFlow's own serialization is not required, but equal protos are.
        example = tf.train.Example.FromString(record)
        assert sorted(example.features.feature) == sorted(features)


def test_corrupt_records_are_detected() -> None:
    data, _ = tfrecord.encode_records({"x": np.arange(12).reshape(3, 4)})
    assert len(list(tfrecord.read_records(data))) == 3
    corrupt = bytearray(data)
    corrupt[20] ^= 0xFF
    with pytest.raises(ValueError, match="corrupt"):
        list(tfrecord.read_records(bytes(corrupt)))
    with pytest.raises(ValueError, match="truncated"):
        list(tfrecord.read_records(data[:-3]))


# --- Storage -----------------------------------------------------------------------------


def test_local_storage_helpers(tmp_path: Path) -> None:
    storage.write_text(str(tmp_path / "a" / "b" / "one.txt"), "1")
    storage.write_bytes(str(tmp_path / "a" / "two.txt"), b"2")
    assert storage.read_text(str(tmp_path / "a" / "b" / "one.txt")) == "1"
    assert storage.glob(str(tmp_path / "a" / "*.txt")) == [str(tmp_path / "a" / "two.txt")]
    assert storage.glob(str(tmp_path / "a" / "**" / "*.txt")) == [
        str(tmp_path / "a" / "b" / "one.txt"),
        str(tmp_path / "a" / "two.txt"),
    ]
    assert storage.exists(str(tmp_path / "a" / "two.txt"))
    assert not list(tmp_path.glob("a/.*")), "temporary files left behind"
    with pytest.raises(InputError):
        storage.read_bytes(str(tmp_path / "nope.txt"))


@pytest.mark.parametrize(
    "pattern",
    ["c/*.txt", "c/**/*.txt", "c/**", "c/part-[ab].txt", "c/part-[!a].txt", "c/?/*", "c/**.txt"],
)
def test_gcs_globs_match_like_local_globs(tmp_path: Path, pattern: str) -> None:
    names = ["c/part-a.txt", "c/part-b.txt", "c/x.md", "c/s/part-a.txt", "c/s/t/u.txt", "d/a.txt"]
    for name in names:
        storage.write_text(str(tmp_path / name), name)
    local = [
        Path(p).relative_to(tmp_path).as_posix() for p in storage.glob(f"{tmp_path}/{pattern}")
    ]
    regex = storage._glob_regex(pattern)
    assert sorted(n for n in names if regex.fullmatch(n)) == local


@pytest.mark.gcs
def test_prepare_reads_and_writes_gcs(
    gcs_bucket: str, prepare_config: PrepareConfigFactory, corpus_dir: Path
) -> None:
    root = f"gs://{gcs_bucket}"
    for path in sorted(corpus_dir.glob("*.txt")):
        storage.upload_file(str(path), f"{root}/corpus/{path.name}")
    storage.write_text(f"{root}/corpus/nested/ignored.txt", "Not matched by a single star.\n")
    assert storage.glob(f"{root}/corpus/*.txt") == [
        f"{root}/corpus/part-a.txt",
        f"{root}/corpus/part-b.txt",
    ]
    assert len(storage.glob(f"{root}/corpus/**/*.txt")) == 3
    assert storage.glob(f"{root}/corpus/part-[ab].txt") == storage.glob(f"{root}/corpus/*.txt")

    config = prepare_config(
        corpus=[f"{root}/corpus/*.txt"],
        output_vocab=f"{root}/out/vocab.txt",
        output_tfrecords=f"{root}/out/tfrecords",
        dupe_factor=1,
    )
    result = run_prepare(config)

    shards = storage.glob(f"{root}/out/tfrecords/*.tfrecord")
    assert shards == list(result.shards)
    total = sum(len(list(tfrecord.read_records(storage.read_bytes(s)))) for s in shards)
    assert total == result.instances
    assert storage.read_text(f"{root}/out/vocab.txt").startswith("[PAD]\n[UNK]\n")
    with pytest.raises(InputError):
        storage.read_bytes(f"{root}/missing.txt")


# --- The command line --------------------------------------------------------------------


def test_cli_runs_prepare(
    prepare_config: PrepareConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = prepare_config(dupe_factor=1)
    config_path = tmp_path / "config.json"
    document = {
        "job": {"namespace": "ns", "name": "bert"},
        "prepare": config.model_dump(by_alias=True),
    }
    config_path.write_text(json.dumps(document))
    monkeypatch.setenv(contract.ENV_CONFIG_PATH, str(config_path))

    assert main(["prepare"]) == contract.EXIT_OK
    assert len(list(Path(config.output_tfrecords).glob("part-*-of-00003.tfrecord"))) == 3


def test_cli_reports_bad_input(
    prepare_config: PrepareConfigFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    message_path = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_MESSAGE_PATH, str(message_path))
    config = prepare_config(corpus=[str(tmp_path / "nothing-*.txt")])
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"prepare": config.model_dump(by_alias=True)}))

    assert main(["prepare", "--config", str(config_path)]) == contract.EXIT_BAD_INPUT
    message = message_path.read_text()
    assert message.count("\n") == 1 and "nothing-*.txt matches no file" in message

    # No train section: the operator rendered the wrong config; retrying cannot help.
    assert main(["train", "--config", str(config_path)]) == contract.EXIT_BAD_INPUT
    assert "no 'train' section" in message_path.read_text()

    config_path.write_text(json.dumps({"prepare": {"corpus": []}}))
    assert main(["prepare", "--config", str(config_path)]) == contract.EXIT_BAD_INPUT
    assert "prepare.corpus" in message_path.read_text()
    assert main(["prepare", "--config", str(tmp_path / "absent.json")]) == (contract.EXIT_BAD_INPUT)


@pytest.mark.parametrize(
    ("raised", "code"),
    [
        (RuntimeError("storage unreachable"), contract.EXIT_INFRASTRUCTURE),
        (SystemExit(contract.EXIT_PREEMPTED), contract.EXIT_PREEMPTED),
    ],
)
def test_cli_maps_other_failures_to_their_exit_codes(
    prepare_config: PrepareConfigFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    raised: BaseException,
    code: int,
) -> None:
    def fail(config: Any) -> None:
        raise raised

    monkeypatch.setattr("bert_trainer.prepare.run_prepare", fail)
    message_path = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_MESSAGE_PATH, str(message_path))
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"prepare": prepare_config().model_dump(by_alias=True)}))

    assert main(["prepare", "--config", str(config_path)]) == code
    assert message_path.read_text().startswith("prepare: ")


# --- Compiled kernels --------------------------------------------------------------------

_SIGNATURES_AFTER_PREPARE = """
import json, sys
from pathlib import Path
from bert_trainer.prepare import kernels, run_prepare
from tests.trainer.conftest import small_prepare_config

corpus_dir, out_dir = Path(sys.argv[1]), Path(sys.argv[2])
for whole_word_masking in (False, True):
    config = small_prepare_config(
        corpus_dir, out_dir / str(whole_word_masking), workers=1,
        whole_word_masking=whole_word_masking,
    )
    run_prepare(config)
print(json.dumps({k.__name__: [str(s) for s in k.signatures] for k in kernels._KERNELS}))
"""


def test_kernels_load_compiles_exactly_what_prepare_calls(corpus_dir: Path, tmp_path: Path) -> None:
    # kernels.load() compiles every kernel once, before a pass forks its pool. A call
    # of other argument types (a strided array, another dtype) would compile a second
    # signature in every worker, seconds each, unseen: this counts them in a fresh
    # process that prepared with and without whole-word masking.
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _SIGNATURES_AFTER_PREPARE, str(corpus_dir), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    signatures = json.loads(done.stdout.splitlines()[-1])
    assert set(signatures) == {"_intern_words", "_pairs", "_mask_rows", "_encode"}
    assert all(len(s) == 1 for s in signatures.values()), signatures
