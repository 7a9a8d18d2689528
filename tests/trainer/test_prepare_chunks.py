"""``prepare`` one chunk at a time: plan, document cuts, counts, determinism, statistics."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path

import numpy as np
import pytest

from bert_trainer import contract, storage
from bert_trainer.prepare import (
    PrepareResult,
    documents,
    heap,
    parallel,
    run_prepare,
    shards,
    source,
    vocab,
    words,
)
from bert_trainer.prepare.steps import count_words
from bert_trainer.storage import InputError
from tests.trainer.conftest import PrepareConfigFactory, synthetic_corpus

TINY_CHUNK = 8 << 10
"""Bytes per chunk in these tests: the 110 KB test corpus makes about 15 chunks."""


def shard_bytes(result: PrepareResult) -> list[bytes]:
    return [Path(p).read_bytes() for p in result.shards]


def document_partition(sentences: documents.Sentences) -> list[list[str]]:
    """The sentences grouped by document (document numbers themselves may differ)."""
    return [
        [text for text, _ in group]
        for _, group in itertools.groupby(
            zip(sentences.text, sentences.document, strict=True), key=lambda x: x[1]
        )
    ]


def files_of(corpus_dir: Path) -> list[tuple[str, int]]:
    return source.sizes([str(p) for p in sorted(corpus_dir.glob("*.txt"))])


# --- The plan ----------------------------------------------------------------------------


def test_small_files_are_packed_and_large_ones_split() -> None:
    files = [("a", 10), ("b", 30), ("c", 70), ("d", 250), ("e", 5), ("f", 100)]
    chunks = source.plan_chunks(files, 100)
    assert [[(p.path, p.start, p.end) for p in c.pieces] for c in chunks] == [
        [("a", 0, 10), ("b", 0, 30)],
        [("c", 0, 70)],
        [("d", 0, 83)],
        [("d", 83, 166)],
        [("d", 166, 250)],
        [("e", 0, 5)],
        [("f", 0, 100)],
    ]
    assert [c.index for c in chunks] == list(range(7))
    assert all(c.nominal_bytes <= 100 for c in chunks)
    assert source.plan_chunks(files, 10**9) == [
        source.Chunk(0, tuple(source.Piece(f, 0, n, n) for f, n in files))
    ]


def random_text(rng: random.Random) -> str:
    lines = []
    for _ in range(rng.randint(0, 60)):
        kind = rng.random()
        if kind < 0.2:
            lines.append(rng.choice(["", " ", "\t ", "\r", "  \r"]))
        else:
            lines.append(" ".join(rng.choice(["ab", "c", "dé", "中", "x\ry"]) for _ in range(5)))
    text = "\n".join(lines)
    return text + rng.choice(["", "\n", "\n\n"])


@pytest.mark.parametrize("seed", range(40))
def test_pieces_hold_the_documents_of_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, seed: int
) -> None:
    # Small blocks, so lines and boundaries cross block edges.
    monkeypatch.setattr(source, "SCAN_BLOCK", 7)
    monkeypatch.setattr(source, "READ_BLOCK", 11)
    rng = random.Random(seed)
    path = tmp_path / "corpus.txt"
    path.write_bytes(random_text(rng).encode())
    whole = documents.split_documents([path.read_bytes().decode()])
    for chunk_bytes in (1, 5, 17, 64, 10**6):
        chunks = source.plan_chunks(source.sizes([str(path)]), chunk_bytes)
        texts = [text for chunk in chunks for text in source.read_chunk(chunk)]
        # The pieces partition the file ...
        assert "".join(texts) == path.read_bytes().decode()
        # ... at document boundaries: the same sentences in the same documents.
        pieces = documents.split_documents(texts)
        assert pieces.text == whole.text
        assert document_partition(pieces) == document_partition(whole)


def test_a_cut_moves_to_the_next_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_bytes(b"one\ntwo\n\nthree\n \nfour")
    f = source.open_file(str(path))
    assert [source.document_cut(f, x) for x in range(f.size + 2)] == [
        0, 8, 8, 8, 8, 8, 8, 8, 8, 15, 15, 15, 15, 15, 15, 15, 21, 21, 21, 21, 21, 21, 21,
    ]  # fmt: skip


def test_a_file_without_blank_lines_stays_whole(tmp_path: Path) -> None:
    path = tmp_path / "one-document.txt"
    path.write_text("a sentence\n" * 100)
    chunks = source.plan_chunks(source.sizes([str(path)]), 64)
    texts = [source.read_chunk(c) for c in chunks]
    assert len(chunks) > 10
    assert texts[0] == [path.read_text()] and all(t == [""] for t in texts[1:])


def test_invalid_utf8_and_missing_files_are_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    [chunk] = source.plan_chunks(source.sizes([str(path)]), 100)
    with pytest.raises(InputError, match="not UTF-8"):
        source.read_chunk(chunk)
    with pytest.raises(InputError, match="does not exist"):
        source.sizes([str(tmp_path / "absent.txt")])


# --- The vocab ---------------------------------------------------------------------------


def test_counts_chunk_by_chunk_equal_the_whole_corpus(corpus_dir: Path) -> None:
    files = files_of(corpus_dir)
    chunks = source.plan_chunks(files, TINY_CHUNK)
    assert len(chunks) > 10
    counts, lines = count_words(chunks, lowercase=True, workers=1)

    texts = [Path(f).read_text() for f, _ in files]
    sentences = documents.split_documents(texts)
    whole = words.split_words(sentences.text, lowercase=True)
    assert lines == len(sentences.text)
    assert list(counts) == whole.distinct  # first-appearance order too
    assert list(counts.values()) == whole.counts().tolist()

    def train(distinct: list[str], n: list[int]) -> list[str]:
        return vocab.train_vocab(distinct, n, vocab_size=800, min_frequency=2)

    assert train(list(counts), list(counts.values())) == train(
        whole.distinct, whole.counts().tolist()
    )


def test_the_trained_vocab_does_not_depend_on_the_chunk_size(
    prepare_config: PrepareConfigFactory,
) -> None:
    run_prepare(prepare_config(dupe_factor=1, chunk_bytes=10**9))
    whole = Path(prepare_config().output_vocab).read_bytes()
    run_prepare(prepare_config(dupe_factor=1, chunk_bytes=TINY_CHUNK))
    assert Path(prepare_config().output_vocab).read_bytes() == whole


# --- Determinism -------------------------------------------------------------------------


def test_records_do_not_depend_on_the_worker_count(
    prepare_config: PrepareConfigFactory, corpus_dir: Path
) -> None:
    assert len(source.plan_chunks(files_of(corpus_dir), TINY_CHUNK)) > 10
    one = run_prepare(prepare_config(chunk_bytes=TINY_CHUNK, workers=1))
    one_bytes = shard_bytes(one)
    three = run_prepare(prepare_config(chunk_bytes=TINY_CHUNK, workers=3))
    assert shard_bytes(three) == one_bytes, "worker count changed the output"
    assert three.instances == one.instances > 1000
    # The chunk size is a setting: it changes the records (the NSP pools), not their number much.
    whole = run_prepare(prepare_config(chunk_bytes=10**9, workers=3))
    assert shard_bytes(whole) != one_bytes
    assert whole.documents == one.documents and whole.corpus_tokens == one.corpus_tokens


# --- Statistics --------------------------------------------------------------------------


def test_chunks_keep_the_nsp_and_masking_statistics(
    prepare_config: PrepareConfigFactory, tmp_path: Path
) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "big.txt").write_text(synthetic_corpus(1500, seed=11))
    settings = {"corpus": [str(corpus / "*.txt")], "dupe_factor": 3, "workers": 2}
    whole = run_prepare(prepare_config(**settings, chunk_bytes=10**9))
    chunked = run_prepare(prepare_config(**settings, chunk_bytes=32 << 10))
    assert len(source.plan_chunks(files_of(corpus), 32 << 10)) >= 10

    def stats(r: PrepareResult) -> dict[str, float]:
        return {
            "random_next": r.random_next / r.instances,
            "masked_per_token": r.masked / r.tokens,
            "tokens_per_instance": r.tokens / r.instances,
            "instances_per_document": r.instances / r.documents,
        }

    a, b = stats(whole), stats(chunked)
    assert whole.documents == chunked.documents == 1500
    assert abs(a["random_next"] - b["random_next"]) < 0.02, (a, b)
    assert 0.5 < b["random_next"] < 0.62, b
    assert abs(a["masked_per_token"] - b["masked_per_token"]) < 0.003, (a, b)
    assert abs(a["tokens_per_instance"] / b["tokens_per_instance"] - 1) < 0.02, (a, b)
    assert abs(a["instances_per_document"] / b["instances_per_document"] - 1) < 0.03, (a, b)


# --- Shards ------------------------------------------------------------------------------


def test_large_shards_are_shuffled_through_buckets(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    records = [
        f"<{i}:{'x' * int(n)}>".encode() for i, n in enumerate(rng.integers(0, 300, size=3000))
    ]
    sizes = np.array([len(r) for r in records], dtype=np.int64)
    spool, sizes_path = tmp_path / "spool", tmp_path / "sizes"

    def write(shuffle_bytes: int, name: str) -> bytes:
        spool.write_bytes(b"".join(records))
        sizes_path.write_bytes(sizes.tobytes())
        job = shards.ShardJob(
            str(spool),
            str(sizes_path),
            str(tmp_path / name),
            np.random.SeedSequence(5),
            shuffle_bytes=shuffle_bytes,
        )
        assert shards.write_shard(job) == len(records)
        return (tmp_path / name).read_bytes()

    def split(data: bytes) -> list[bytes]:
        return [record + b">" for record in data.split(b">")[:-1]]

    in_memory = write(10**9, "a")
    bucketed = write(20_000, "b")  # buckets of about 10 kB each
    again = write(20_000, "c")
    assert bucketed == again, "not deterministic"
    assert bucketed != in_memory and bucketed != b"".join(records)
    assert len(bucketed) == len(in_memory)
    assert sorted(split(bucketed)) == sorted(records)
    assert not spool.exists()


# --- Storage -----------------------------------------------------------------------------


@pytest.mark.tensorflow
def test_the_retry_budget_is_the_trainers(monkeypatch: pytest.MonkeyPatch) -> None:
    from bert_trainer import retry

    assert source.DEFAULT_RETRY_BUDGET_SECONDS == retry.DEFAULT_BUDGET_SECONDS
    for raw in [None, "", "0", "12.5", "-1", "soon", "inf"]:
        if raw is None:
            monkeypatch.delenv(contract.ENV_STORAGE_RETRY_SECONDS, raising=False)
        else:
            monkeypatch.setenv(contract.ENV_STORAGE_RETRY_SECONDS, raw)
        try:
            expected: float | str = retry.budget_seconds()
        except InputError as e:
            expected = str(e)
        try:
            got: float | str = source.retry_budget_seconds()
        except InputError as e:
            got = str(e)
        assert got == expected


@pytest.mark.gcs
def test_gcs_objects_are_read_by_ranges(
    gcs_bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source, "SCAN_BLOCK", 100)
    monkeypatch.setattr(source, "READ_BLOCK", 1000)
    text = synthetic_corpus(40, seed=5)
    local = tmp_path / "c.txt"
    local.write_text(text)
    remote = f"gs://{gcs_bucket}/ranges/c.txt"
    storage.upload_file(str(local), remote)

    reads: list[tuple[int, int]] = []
    open_file = source.open_file
    gcs_file = open_file(remote)
    original = gcs_file.read

    def counted(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return original(offset, length)

    monkeypatch.setattr(gcs_file, "read", counted)
    monkeypatch.setattr(source, "open_file", lambda path, generation=None: gcs_file)
    assert gcs_file.size == len(text.encode())
    chunks = source.plan_chunks([(remote, gcs_file.size)], 2000)
    assert len(chunks) > 3
    assert "".join(t for c in chunks for t in source.read_chunk(c)) == text
    assert max(length for _, length in reads) <= 1000, "not read by ranges"
    with pytest.raises(InputError, match="does not exist"):
        open_file(f"gs://{gcs_bucket}/ranges/absent.txt")


def test_a_file_that_changes_between_plan_and_read_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("one\n\ntwo\n")
    [chunk] = source.plan_chunks(source.sizes([str(path)]), 100)
    path.write_text("one\n\ntwo\n\nthree\n")
    with pytest.raises(InputError, match="changed while the job prepared its records"):
        source.read_chunk(chunk)


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"cpu.max": "150000 100000\n"}, 2),  # cgroup v2, a 1500m limit: rounded up
        ({"cpu.max": "50000 100000\n"}, 1),
        ({"cpu.max": "max 100000\n"}, None),  # no limit: the affinity
        ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 1),
        ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
        ({}, None),
    ],
)
def test_a_pods_cpu_limit_caps_its_processes(
    tmp_path: Path, files: dict[str, str], expected: int | None
) -> None:
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    usable = len(os.sched_getaffinity(0))
    assert parallel.cpu_count(str(tmp_path)) == (
        usable if expected is None else min(usable, expected)
    )


def test_the_pods_cpu_request_caps_its_processes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.ENV_CPUS, "1")
    assert parallel.cpu_count(str(tmp_path)) == 1
    monkeypatch.setenv(contract.ENV_CPUS, "64")
    assert parallel.cpu_count(str(tmp_path)) == len(os.sched_getaffinity(0))


def test_the_preparation_sets_glibcs_heap_thresholds() -> None:
    # glibc on this image and machine: mallopt accepts every setting (heap.py says why).
    assert heap.configure()
