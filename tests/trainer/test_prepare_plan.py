"""The plan of a distributed prepare, each pod's share of it, and the work dir's formats."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bert_trainer import storage
from bert_trainer.prepare import fragments, shards, source, workdir
from bert_trainer.prepare import plan as plans
from bert_trainer.prepare.plan import CorpusFile, Plan
from bert_trainer.storage import InputError
from tests.trainer.conftest import TINY_CHUNK, pass_config, small_prepare_config


def plan_of(sizes: list[int], chunk_bytes: int = 100) -> Plan:
    config = small_prepare_config(Path("/c"), Path("/o"), chunk_bytes=chunk_bytes)
    files = [CorpusFile(f"/c/{i}.txt", size) for i, size in enumerate(sizes)]
    return plans.make_plan(files, config)


def test_the_plan_round_trips_with_sizes_and_generations(corpus_dir: Path, tmp_path: Path) -> None:
    config = pass_config(corpus_dir, tmp_path)
    files = [
        CorpusFile("gs://b/c/a.txt", 20_000, generation=1712),
        CorpusFile(str(corpus_dir / "part-a.txt"), 5_000),
    ]
    plan = plans.make_plan(files, config)
    assert len(plan.chunks) == 4  # a.txt split in 3 ranges, then part-a.txt
    assert all(p.generation == 1712 for c in plan.chunks[:3] for p in c.pieces)
    assert plan.chunks[3].pieces[0].generation is None
    again = Plan.from_json(plan.to_json())
    assert again == plan
    assert again.total_bytes == 25_000
    assert again.config_digest == plans.config_digest(config)


def test_the_config_digest_ignores_only_how_the_work_is_run(
    corpus_dir: Path, tmp_path: Path
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    digest = plans.config_digest(config)
    same = config.model_copy(update={"workers": 7, "work_dir": "gs://elsewhere/prepare"})
    assert plans.config_digest(same) == digest
    for change in ({"seed": 1}, {"chunk_bytes": 1 << 20}, {"num_shards": 5}, {"vocab_size": 900}):
        assert plans.config_digest(config.model_copy(update=change)) != digest, change


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 400), min_size=1, max_size=30),
    workers=st.integers(1, 12),
)
def test_every_chunk_goes_to_one_pod_in_contiguous_byte_balanced_runs(
    sizes: list[int], workers: int
) -> None:
    plan = plan_of(sizes)
    shares = [plans.assigned(plan, workers, i) for i in range(workers)]
    # Every chunk once, in order: the shares are contiguous runs, in index order.
    assert [c.index for share in shares for c in share] == list(range(len(plan.chunks)))
    if len(plan.chunks) <= workers:
        assert [len(s) for s in shares] == [1] * len(plan.chunks) + [0] * (
            workers - len(plan.chunks)
        )
        return
    total = sum(c.nominal_bytes for c in plan.chunks)
    largest = max(c.nominal_bytes for c in plan.chunks)
    for share in shares:
        # A run holds the chunks whose middle falls in its 1/workers of the bytes.
        assert sum(c.nominal_bytes for c in share) <= total / workers + largest


def test_chunks_go_to_the_pod_of_their_middle_byte() -> None:
    plan = plan_of([100, 100, 100, 100, 100, 100], chunk_bytes=100)
    # Middles at 50, 150, ..., 550 of 600 bytes; 4 pods of 150 bytes each.
    assert [[c.index for c in plans.assigned(plan, 4, i)] for i in range(4)] == [
        [0],
        [1, 2],
        [3],
        [4, 5],
    ]


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 50),
    chunk=st.integers(0, 40),
    num_shards=st.integers(1, 9),
)
def test_fragment_counts_are_what_the_dealer_deals(n: int, chunk: int, num_shards: int) -> None:
    dealt = [0] * num_shards
    for record in range(n):
        dealt[(chunk % num_shards + record) % num_shards] += 1
    predicted = [fragments.fragment_records(n, chunk, num_shards, s) for s in range(num_shards)]
    assert predicted == dealt
    assert max(predicted) - min(predicted) <= 1


def test_the_dealer_deals_a_chunk_from_its_own_shard(tmp_path: Path) -> None:
    import numpy as np

    with shards.Dealer(str(tmp_path), 3, start=2) as dealer:
        # One batch of 4 records, grouped by residue: record j goes to shard (2 + j) % 3.
        groups = [b"r0r3", b"r1", b"r2"]
        sizes = [np.array([2, 2]), np.array([2]), np.array([2])]
        dealer.deal(groups, sizes)
        spools = dealer.fragments()
    assert [Path(spool).read_bytes() for spool, _ in spools] == [b"r1", b"r2", b"r0r3"]


@pytest.mark.parametrize(
    "words",
    [
        ["the", "cat", "the"],
        ["a\u2028b", "c\x85d", "e\x1cf", "g\x0bh", "i\x0cj", "k\u2029l", "ünï"],
        [],
    ],
)
def test_counts_round_trip_whatever_a_word_holds(tmp_path: Path, words: list[str]) -> None:
    path = str(tmp_path / "counts" / "chunk-00000.tsv.gz")
    counts = list(range(1, len(words) + 1))
    workdir.write_counts(path, words, counts, lines=7)
    assert workdir.read_counts(path) == (words, counts, 7)
    # The same counts are the same bytes (a rerun overwrites with equal bytes).
    first = Path(path).read_bytes()
    workdir.write_counts(path, words, counts, lines=7)
    assert Path(path).read_bytes() == first
    assert gzip.decompress(first).startswith(b"7\n")


def test_a_word_with_a_tab_cannot_be_written(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="tab"):
        workdir.write_counts(str(tmp_path / "c.tsv.gz"), ["a\tb"], [1], 1)


def test_a_marker_counts_only_for_its_settings_and_pods(tmp_path: Path) -> None:
    path = str(tmp_path / "done" / "count-1.json")
    assert workdir.read_marker(path, 3, "abc") is None
    workdir.write_marker(path, 3, "abc", {"chunksDone": 2})
    assert workdir.read_marker(path, 3, "abc") == {"chunksDone": 2}
    assert workdir.read_marker(path, 4, "abc") is None
    assert workdir.read_marker(path, 3, "other") is None
    Path(path).write_text("{torn")
    assert workdir.read_marker(path, 3, "abc") is None


def test_a_local_file_that_changed_after_the_plan_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "c.txt"
    path.write_text("one\n\ntwo\n")
    files = plans.stat_files([str(path)])
    assert files == [CorpusFile(str(path), 9, None)]
    plan = plans.make_plan(files, small_prepare_config(tmp_path, tmp_path, chunk_bytes=TINY_CHUNK))
    path.write_text("one\n\ntwo\n\nthree\n")
    with pytest.raises(InputError, match="changed while the job prepared its records"):
        source.read_chunk(plan.chunks[0])


def test_a_missing_intermediate_is_not_bad_input(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="the plan pass did not write it"):
        workdir.read_intermediate(str(tmp_path / "plan.json"), "plan")
    assert not storage.exists(str(tmp_path / "plan.json"))
