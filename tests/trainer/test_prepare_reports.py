"""A prepare pod's reports: only its own entry, progress best effort, the final one required."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from bert_trainer import contract
from bert_trainer.__main__ import main
from bert_trainer.config import JobRef, PrepareConfig, TrainerConfig
from bert_trainer.prepare import fragments, reports, workdir
from bert_trainer.prepare import plan as plans
from bert_trainer.prepare.passes import run_pass
from bert_trainer.prepare.reports import KubernetesReportSink, PassReporter, make_reporter
from tests.trainer.conftest import pass_config

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


class Capture:
    """A sink that records what it is sent; it fails its first ``failures`` sends."""

    def __init__(self, failures: int = 0, fail_progress: bool = False) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.failures = failures
        self.fail_progress = fail_progress
        self.lock = threading.Lock()

    def send(self, key: str, report: Mapping[str, Any]) -> None:
        with self.lock:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("API unreachable")
            if self.fail_progress and not report["done"]:
                raise ConnectionError("API slow")
            self.sent.append((key, dict(report)))

    @property
    def final(self) -> dict[str, Any]:
        assert self.sent and self.sent[-1][1]["done"] is True
        return self.sent[-1][1]


def reporter(sink: Capture, prepare_pass: str, index: int, **kwargs: Any) -> PassReporter:
    return PassReporter(sink, prepare_pass, index, min_interval_seconds=0, **kwargs)


def check_shape(sink: Capture, key: str) -> None:
    """Only ``key``; contract fields; non-negative ints; one final report, the last."""
    assert {k for k, _ in sink.sent} == {key}
    assert [r["done"] for _, r in sink.sent].count(True) == 1
    for _, r in sink.sent:
        assert set(r) <= set(contract.PREPARATION_REPORT_FIELDS)
        assert RFC3339_UTC.match(r["updatedTime"])
        for name, value in r.items():
            if name not in ("done", "updatedTime"):
                assert isinstance(value, int) and value >= 0, (name, value)


def run_reported(config: PrepareConfig, prepare_pass: str, index: int, pods: int) -> Capture:
    sink = Capture()
    run_pass(config, prepare_pass, index, pods, reporter(sink, prepare_pass, index))
    check_shape(sink, contract.preparation_report_key(prepare_pass, index))
    return sink


def test_every_pass_reports_its_own_totals(corpus_dir: Path, tmp_path: Path) -> None:
    config = pass_config(corpus_dir, tmp_path)
    plan_report = run_reported(config, "plan", 0, 1).final
    plan = plans.Plan.from_json(Path(config.work_dir or "", "plan.json").read_text())
    sizes = sum(p.stat().st_size for p in corpus_dir.glob("*.txt"))
    assert plan_report == {
        "files": 2,
        "bytesTotal": sizes,
        "chunksTotal": len(plan.chunks),
        "done": True,
        "updatedTime": plan_report["updatedTime"],
    }

    count_bytes = 0
    for index in range(3):
        final = run_reported(config, "count", index, 3).final
        mine = plans.assigned(plan, 3, index)
        assert final["bytesDone"] == final["bytesTotal"] == sum(c.nominal_bytes for c in mine)
        assert final["chunksDone"] == final["chunksTotal"] == len(mine) > 0
        assert "instances" not in final and "files" not in final
        count_bytes += final["bytesTotal"]
    assert count_bytes == sum(c.nominal_bytes for c in plan.chunks)

    vocab = run_reported(config, "vocab", 0, 1).final
    assert vocab["vocabSize"] == len(Path(config.output_vocab).read_text().splitlines())
    assert set(vocab) == {"vocabSize", "done", "updatedTime"}

    instances = []
    for index in range(2):
        final = run_reported(config, "records", index, 2).final
        mine = plans.assigned(plan, 2, index)
        assert final["bytesDone"] == final["bytesTotal"] == sum(c.nominal_bytes for c in mine)
        assert final["chunksDone"] == final["chunksTotal"] == len(mine)
        instances.append(final["instances"])
    stats = fragments.read_stats(config.work_dir or "", plan.chunks)
    assert sum(instances) == sum(s.instances for s in stats) > 0

    written = []
    for index in range(3):
        final = run_reported(config, "shards", index, 3).final
        shards = range(index, config.num_shards, 3)
        assert final["chunksDone"] == final["chunksTotal"] == len(shards)
        written.append(final["instances"])
    assert sum(written) == sum(instances)


def test_progress_reports_come_before_the_final_one_and_none_after(
    corpus_dir: Path, tmp_path: Path
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    run_pass(config, "plan", 0, 1)
    delivered = threading.Event()

    class Signalling(Capture):
        def send(self, key: str, report: Mapping[str, Any]) -> None:
            super().send(key, report)
            delivered.set()

    sink = Signalling()
    pod = reporter(sink, "count", 0)
    pod.progress(bytesDone=0, bytesTotal=10, chunksDone=0, chunksTotal=2)
    assert delivered.wait(10), "no progress report sent"
    run_pass(config, "count", 0, 1, pod)
    pod.progress(bytesDone=10, bytesTotal=10, chunksDone=2, chunksTotal=2)  # after: dropped
    check_shape(sink, "count-0")
    assert sink.sent[0][1]["done"] is False
    assert sink.sent[0][1]["chunksTotal"] == 2
    assert sink.sent[-1][1]["done"] is True


def test_the_final_report_waits_for_a_progress_report_in_flight() -> None:
    """An older progress report landing after the final one would undo its ``done``."""
    entered, release = threading.Event(), threading.Event()
    order: list[bool] = []

    class Slow:
        def send(self, key: str, report: Mapping[str, Any]) -> None:
            if not report["done"]:
                entered.set()
                assert release.wait(10)
            order.append(report["done"])

    pod = PassReporter(Slow(), "records", 1, min_interval_seconds=0)
    pod.progress(chunksDone=0, chunksTotal=1)
    assert entered.wait(10)
    final = threading.Thread(target=pod.final, args=({"chunksDone": 1, "chunksTotal": 1},))
    final.start()
    final.join(0.5)
    assert final.is_alive(), "the final report did not wait for the one in flight"
    release.set()
    final.join(10)
    assert order == [False, True]


def test_failing_progress_reports_are_dropped_and_the_pass_goes_on(
    corpus_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = pass_config(corpus_dir, tmp_path)
    run_pass(config, "plan", 0, 1)
    sink = Capture(fail_progress=True)
    run_pass(config, "count", 0, 1, reporter(sink, "count", 0))
    assert [r["done"] for _, r in sink.sent] == [True]
    assert "preparation report count-0 dropped" in caplog.text


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0
        self.waits: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.waits.append(seconds)
        self.now += seconds


def test_the_final_report_is_retried_for_the_storage_budget(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.ENV_STORAGE_RETRY_SECONDS, "5")
    config = pass_config(corpus_dir, tmp_path / "flaky")
    time = FakeTime()
    flaky = Capture(failures=2)
    run_pass(config, "plan", 0, 1, reporter(flaky, "plan", 0, clock=time.clock, sleep=time.sleep))
    assert flaky.final["files"] == 2 and time.waits == [1.0, 2.0]

    time = FakeTime()
    down = Capture(failures=1000)
    config = pass_config(corpus_dir, tmp_path / "down")
    with pytest.raises(RuntimeError, match=r"final report plan-0 .*\(4 attempts\)"):
        run_pass(
            config, "plan", 0, 1, reporter(down, "plan", 0, clock=time.clock, sleep=time.sleep)
        )
    assert time.waits == [1.0, 2.0, 2.0] and time.now == 5.0
    # The marker was written before the report: the rerun only reports again.
    marker = workdir.marker_path(config.work_dir or "", "plan", 0)
    assert json.loads(Path(marker).read_text())["report"]["files"] == 2
    again = Capture()
    run_pass(config, "plan", 0, 1, reporter(again, "plan", 0))
    assert again.final["files"] == 2


def test_without_a_budget_the_final_report_is_tried_once(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(contract.ENV_STORAGE_RETRY_SECONDS, "0")
    down = Capture(failures=1)
    time = FakeTime()
    with pytest.raises(RuntimeError, match=r"\(1 attempts\)"):
        run_pass(
            pass_config(corpus_dir, tmp_path),
            "plan",
            0,
            1,
            reporter(down, "plan", 0, clock=time.clock, sleep=time.sleep),
        )
    assert time.waits == []


def test_a_report_holds_only_contract_fields() -> None:
    pod = PassReporter(None, "count", 0)
    with pytest.raises(ValueError, match="step"):
        pod.progress(step=1)
    with pytest.raises(ValueError, match="negative"):
        pod.final({"bytesDone": -1})
    assert set(reports.COUNTED_FIELDS) | {"done", "updatedTime"} == set(
        contract.PREPARATION_REPORT_FIELDS
    )


def test_the_kubernetes_sink_patches_only_its_own_entry() -> None:
    calls: list[dict[str, Any]] = []

    class Api:
        def patch_namespaced_custom_object_status(self, **kwargs: Any) -> None:
            calls.append(kwargs)

    sink = KubernetesReportSink(JobRef(namespace="ml", name="bert-small"))
    sink._api = Api()
    sink.send("records-3", {"chunksDone": 1, "done": False})
    (call,) = calls
    assert (call["group"], call["version"], call["plural"]) == (
        contract.API_GROUP,
        contract.API_VERSION,
        contract.PLURAL,
    )
    assert (call["namespace"], call["name"]) == ("ml", "bert-small")
    assert call["body"] == {
        "status": {"preparation": {"reports": {"records-3": {"chunksDone": 1, "done": False}}}}
    }


def test_only_a_job_that_wants_reports_gets_a_sink() -> None:
    job = JobRef(namespace="ml", name="bert-small", min_report_interval_seconds=3)
    assert make_reporter(None, "plan", 0)._sink is None
    assert make_reporter(job.model_copy(update={"report_progress": False}), "plan", 0)._sink is None
    pod = make_reporter(job, "records", 2)
    assert isinstance(pod._sink, KubernetesReportSink) and pod.key == "records-2"
    pod.close()


def test_the_cli_exits_20_when_the_final_report_cannot_be_written(
    corpus_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[tuple[str, dict[str, Any]]] = []

    def unreachable(self: KubernetesReportSink, key: str, report: Mapping[str, Any]) -> None:
        sent.append((key, dict(report)))
        raise ConnectionError("API unreachable")

    monkeypatch.setattr(KubernetesReportSink, "send", unreachable)
    monkeypatch.setenv(contract.ENV_STORAGE_RETRY_SECONDS, "0")
    message = tmp_path / "termination-log"
    monkeypatch.setenv(contract.ENV_TERMINATION_MESSAGE_PATH, str(message))
    path = tmp_path / "config.json"
    job = JobRef(namespace="ml", name="bert-small")
    config = pass_config(corpus_dir, tmp_path)
    path.write_text(TrainerConfig(prepare=config, job=job).model_dump_json(by_alias=True))
    code = main(["prepare", "--config", str(path), "--pass", "plan"])
    assert code == contract.EXIT_INFRASTRUCTURE
    assert "final report plan-0" in message.read_text()
    assert sent[-1][0] == "plan-0" and sent[-1][1]["done"] is True
