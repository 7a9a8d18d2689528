"""The preparation as passes over pods: the same bytes for any worker count, reruns, reports."""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bert_trainer import contract, storage
from bert_trainer.__main__ import main
from bert_trainer.config import PrepareConfig, TrainerConfig
from bert_trainer.prepare import run_prepare, workdir
from bert_trainer.prepare.distributed import run_pass
from bert_trainer.prepare.reports import PassReporter
from bert_trainer.prepare.run import count_words
from bert_trainer.storage import InputError
from tests.trainer.conftest import small_prepare_config

TINY_CHUNK = 8 << 10
PASSES = contract.PREPARE_PASSES


def config_for(corpus_dir: Path, out: Path, **overrides: Any) -> PrepareConfig:
    fields: dict[str, Any] = {
        "chunk_bytes": TINY_CHUNK,
        "work_dir": str(out / "work"),
        "num_shards": 4,
        "workers": 1,
    }
    return small_prepare_config(corpus_dir, out, **{**fields, **overrides})


def run_all(config: PrepareConfig, workers: int, order_seed: int = 0) -> None:
    """Every pass, each index run separately and in a shuffled order, as pods would."""
    rng = random.Random(order_seed)
    for prepare_pass in PASSES:
        pods = 1 if prepare_pass in ("plan", "vocab") else workers
        indexes = list(range(pods))
        rng.shuffle(indexes)
        for index in indexes:
            run_pass(config, prepare_pass, index, pods)


def outputs(config: PrepareConfig) -> dict[str, bytes]:
    files = {
        p.name: p.read_bytes() for p in sorted(Path(config.output_tfrecords).glob("*.tfrecord"))
    }
    files["vocab.txt"] = Path(config.output_vocab).read_bytes()
    return files


def test_any_worker_count_writes_the_same_bytes_as_one_process(
    corpus_dir: Path, tmp_path: Path
) -> None:
    single = config_for(corpus_dir, tmp_path / "single", work_dir=None)
    run_prepare(single)
    expected = outputs(single)
    assert len(expected) == 5
    for workers in (1, 3):
        config = config_for(corpus_dir, tmp_path / f"pods-{workers}")
        run_all(config, workers, order_seed=workers)
        assert outputs(config) == expected, f"{workers} workers"
    # The plan had many chunks, so 3 workers really split the work.
    plan = workdir.Plan.from_json(storage.read_text(workdir.plan_path(config.work_dir or "")))
    assert len(plan.chunks) > 6
    assert all(workdir.assigned(plan.chunks, 3, i) for i in range(3))


def test_the_vocab_of_the_count_and_vocab_passes_is_the_whole_corpus_vocab(
    corpus_dir: Path, tmp_path: Path
) -> None:
    config = config_for(corpus_dir, tmp_path / "pods")
    for prepare_pass, pods in (("plan", 1), ("count", 3), ("vocab", 1)):
        for index in range(pods):
            run_pass(config, prepare_pass, index, pods)
    whole = config_for(corpus_dir, tmp_path / "whole", chunk_bytes=1 << 30)
    from bert_trainer.prepare import source, vocab

    chunks = source.plan_chunks(source.sizes(sorted(storage.glob(whole.corpus[0]))), 1 << 30)
    assert len(chunks) == 1
    counts, _ = count_words(chunks, whole.lowercase, 1)
    tokens = vocab.train_vocab(
        list(counts),
        list(counts.values()),
        vocab_size=whole.vocab_size,
        min_frequency=whole.min_frequency,
    )
    assert Path(config.output_vocab).read_text() == vocab.vocab_text(tokens)


def test_a_rerun_index_gives_the_same_bytes_with_or_without_its_marker(
    corpus_dir: Path, tmp_path: Path
) -> None:
    reference = config_for(corpus_dir, tmp_path / "reference")
    run_all(reference, 2)
    config = config_for(corpus_dir, tmp_path / "rerun")
    work = Path(config.work_dir or "")
    for prepare_pass in PASSES:
        pods = 1 if prepare_pass in ("plan", "vocab") else 2
        for index in range(pods):
            run_pass(config, prepare_pass, index, pods)
            if prepare_pass in ("records", "count") and index == 1:
                # A pod that died after its outputs but before its marker, then its rerun.
                (work / "done" / f"{prepare_pass}-1.json").unlink()
                run_pass(config, prepare_pass, 1, pods)
    # A rerun of a finished index (its marker stands) changes nothing.
    marker = work / "done" / "shards-0.json"
    before = marker.read_text()
    assert run_pass(config, "shards", 0, 2) == json.loads(before)
    assert outputs(config) == outputs(reference)
    # Intermediates are gone once the shards are written.
    assert not list(work.glob("records/*/shard-*"))
    assert not list(work.glob("counts/*"))


def test_shards_are_balanced_within_the_documented_bound(corpus_dir: Path, tmp_path: Path) -> None:
    config = config_for(corpus_dir, tmp_path / "out", num_shards=5)
    result = run_prepare(config)
    counts = [_records(p) for p in sorted(result.shards)]
    chunks = len(
        workdir.make_plan(
            [(str(p), p.stat().st_size) for p in sorted(corpus_dir.glob("*.txt"))], TINY_CHUNK
        ).chunks
    )
    bound = -(-chunks // config.num_shards) + 1
    assert sum(counts) == result.instances
    assert max(counts) - min(counts) <= bound, (counts, bound)


def _records(path: str) -> int:
    data = Path(path).read_bytes()
    n = offset = 0
    while offset < len(data):
        length = int.from_bytes(data[offset : offset + 8], "little")
        offset += 8 + 4 + length + 4
        n += 1
    return n


class Capture:
    def __init__(self, failures: int = 0) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.failures = failures

    def send(self, key: str, report: Mapping[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("API unreachable")
        self.sent.append((key, dict(report)))


def test_a_pod_reports_only_its_own_entry_and_ends_with_done(
    corpus_dir: Path, tmp_path: Path
) -> None:
    config = config_for(corpus_dir, tmp_path / "out")
    plan_sink = Capture()
    run_pass(config, "plan", 0, 1, PassReporter(plan_sink, "plan", 0))
    ((key, plan),) = plan_sink.sent
    assert key == "plan-0" and plan["done"] is True
    assert plan["files"] == 2
    assert plan["bytesTotal"] == sum(p.stat().st_size for p in corpus_dir.glob("*.txt"))
    sink = Capture()
    run_pass(config, "count", 1, 3, PassReporter(sink, "count", 1, min_interval_seconds=0))
    assert {key for key, _ in sink.sent} == {"count-1"}
    assert [r["done"] for _, r in sink.sent][-1] is True
    assert not any(r["done"] for _, r in sink.sent[:-1])
    final = sink.sent[-1][1]
    assert final["bytesDone"] == final["bytesTotal"] > 0
    assert set(final) <= set(contract.PREPARATION_REPORT_FIELDS)


def test_an_undeliverable_final_report_fails_the_pass(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.ENV_STORAGE_RETRY_SECONDS, "3")
    config = config_for(corpus_dir, tmp_path / "out")
    clock = [0.0]
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock[0] += seconds

    flaky = Capture(failures=2)
    run_pass(
        config, "plan", 0, 1, PassReporter(flaky, "plan", 0, clock=lambda: clock[0], sleep=sleep)
    )
    assert len(flaky.sent) == 1 and waits == [1.0, 2.0]
    down = Capture(failures=100)
    with pytest.raises(RuntimeError, match="final report plan-0"):
        run_pass(
            config_for(corpus_dir, tmp_path / "again"),
            "plan",
            0,
            1,
            PassReporter(down, "plan", 0, clock=lambda: clock[0], sleep=sleep),
        )


def test_a_pass_needs_a_work_dir(corpus_dir: Path, tmp_path: Path) -> None:
    config = config_for(corpus_dir, tmp_path / "out", work_dir=None)
    with pytest.raises(InputError, match="workDir"):
        run_pass(config, "plan", 0, 1)
    path = tmp_path / "config.json"
    path.write_text(TrainerConfig(prepare=config).model_dump_json(by_alias=True))
    code = main(["prepare", "--config", str(path), "--pass", "plan"])
    assert code == contract.EXIT_BAD_INPUT


def test_the_cli_runs_the_index_of_its_pod(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = config_for(corpus_dir, tmp_path / "out")
    path = tmp_path / "config.json"
    path.write_text(TrainerConfig(prepare=config).model_dump_json(by_alias=True))
    assert main(["prepare", "--config", str(path), "--pass", "plan"]) == 0
    monkeypatch.setenv(contract.ENV_COMPLETION_INDEX, "2")
    assert main(["prepare", "--config", str(path), "--pass", "count", "--workers", "3"]) == 0
    assert (Path(config.work_dir or "") / "done" / "count-2.json").exists()
    assert not (Path(config.work_dir or "") / "done" / "count-0.json").exists()
