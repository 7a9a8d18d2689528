"""The operator on the real control plane, with KWOK playing the TPU slices' pods."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator.render import names
from bpj_devstack import kwok_config, plane
from bpj_devstack.kwok_pods import PodAnnotator
from tests.support import Kubectl, kubectl_exists, kubectl_json, wait_for

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
VOCAB = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the")
VOCAB_SIZE = len(VOCAB)

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture
def bucket(devstack: plane.StackState, monkeypatch: pytest.MonkeyPatch) -> str:
    """A bucket holding a tiny corpus and a vocab, so the operator's input checks pass."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", devstack.gcs_endpoint)
    client = storage.Client(project="bpj-test", credentials=AnonymousCredentials())
    name = f"bpj-op-{uuid.uuid4().hex[:10]}"
    b = client.create_bucket(name)
    b.blob("corpus/a.txt").upload_from_string("One sentence.\nTwo sentences.\n\nNew doc.\n")
    b.blob("records/part-00000-of-00001.tfrecord").upload_from_string(b"x")
    b.blob("vocab.txt").upload_from_string("".join(f"{t}\n" for t in VOCAB))
    return name


def manifest(bucket: str, name: str, *, records: bool = False, **spec: Any) -> dict[str, Any]:
    doc = yaml.safe_load((EXAMPLES / "quickstart.yaml").read_text())
    doc = json.loads(json.dumps(doc).replace("bpj-quickstart", bucket))
    doc["metadata"]["name"] = name
    if records:
        doc["spec"]["data"] = {
            "tfrecords": f"gs://{bucket}/records/*.tfrecord",
            "vocab": f"gs://{bucket}/vocab.txt",
        }
    else:
        # KWOK's pods run nothing, so plan never reports the corpus' size: say the workers.
        doc["spec"]["data"]["preparation"] = {"workers": 2}
    for key, value in spec.items():
        doc["spec"][key] = value
    return copy.deepcopy(doc)


def stuck_manifest(bucket: str, name: str) -> dict[str, Any]:
    """A job whose slice (v5e 4x4) no node pool offers: its training pods stay Pending."""
    doc = manifest(
        bucket, name, records=True, tpu={"accelerator": "tpu-v5-lite-podslice", "topology": "4x4"}
    )
    doc["spec"]["training"]["globalBatchSize"] = 16
    return doc


def wait_job(kubectl: Kubectl, namespace: str, job: str, timeout: float = 60) -> None:
    """Wait until the operator created the child Job ``job``."""

    wait_for(lambda: kubectl_exists(kubectl, "job", job, namespace), timeout, f"the Job {job}")


def apply(kubectl: Kubectl, namespace: str, doc: dict[str, Any]) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", stdin=json.dumps(doc))


def get_bpj(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = kubectl_json(kubectl, "get", "bpj", name, "-n", namespace)
    return obj


def status(kubectl: Kubectl, namespace: str, name: str) -> dict[str, Any]:
    return dict(get_bpj(kubectl, namespace, name).get("status") or {})


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions", []) if c["type"] == kind), {})


def wait_phase(
    kubectl: Kubectl, namespace: str, name: str, phase: str, timeout: float = 120
) -> dict[str, Any]:
    seen: list[str] = []

    def reached() -> bool:
        current = status(kubectl, namespace, name).get("phase")
        if current and (not seen or seen[-1] != current):
            seen.append(current)
        return current == phase

    try:
        wait_for(reached, timeout, f"{name} to reach {phase}")
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; phases seen: {seen}; status: "
            f"{json.dumps(status(kubectl, namespace, name), indent=1)}"
        ) from exc
    return status(kubectl, namespace, name)


@pytest.fixture
def pod_annotator(kube_api: Any) -> Iterator[PodAnnotator]:
    with PodAnnotator(kube_api) as annotator:
        yield annotator


@pytest.fixture
def annotate_pods(pod_annotator: PodAnnotator) -> Callable[[str, str, dict[str, str]], None]:
    """Annotate pods matching a selector the moment they are created (chaos for KWOK)."""
    return pod_annotator.annotate


Submit = Callable[[dict[str, Any]], None]


@pytest.fixture
def submit(kubectl: Kubectl, namespace: str, pod_annotator: PodAnnotator) -> Submit:
    """Apply a BertPretrainJob into ``namespace``, its KWOK check pod reporting as the real one.

    The check reports what the spec alone cannot give: with a given vocab, its size
    (that of ``bucket``'s vocab.txt); without one, nothing (``{}``, KWOK's default).
    """

    def run(doc: dict[str, Any]) -> None:
        if doc["spec"]["data"].get("vocab"):
            pod_annotator.report_check(
                namespace, doc["metadata"]["name"], {"vocabSize": VOCAB_SIZE}
            )
        apply(kubectl, namespace, doc)

    return run


def test_corpus_job_runs_every_stage_to_succeeded(
    kubectl: Kubectl, namespace: str, bucket: str, submit: Submit
) -> None:
    submit(manifest(bucket, "pipeline"))
    st = wait_phase(kubectl, namespace, "pipeline", "Succeeded")
    assert st["jobs"] == {
        "check": "pipeline-check",
        "prepare": "pipeline-prep-shards",
        "train": "pipeline-train-1",
        "export": "pipeline-export",
    }
    assert st["inputs"] == {}, "a KWOK check pod reports nothing beyond the spec"
    for kind in ("InputsChecked", "Prepared", "Trained", "Exported", "Succeeded"):
        assert condition(st, kind)["status"] == "True", kind
    assert st["observedGeneration"] == 1
    assert st["startTime"] <= st["completionTime"]
    jobs = kubectl_json(
        kubectl, "get", "jobs", "-n", namespace, "-l", f"{names.LABEL_JOB}=pipeline"
    )["items"]
    assert sorted(j["metadata"]["name"] for j in jobs) == sorted(
        [
            "pipeline-check",
            "pipeline-export",
            *(f"pipeline-prep-{p}" for p in ("plan", "count", "vocab", "records", "shards")),
            "pipeline-train-1",
        ]
    )
    count = next(j for j in jobs if j["metadata"]["name"] == "pipeline-prep-count")
    assert (count["spec"]["completions"], count["status"]["succeeded"]) == (2, 2)
    expected = {
        "Started",
        "CheckingInputs",
        "InputsChecked",
        "Preparing",
        "Prepared",
        "Training",
        "Trained",
        "Exporting",
        "Succeeded",
    }
    reasons: set[str] = set()

    def recorded() -> bool:
        # Events are posted after the status write, from their own thread: the last
        # one may trail the phase it reports by a moment.
        events = kubectl_json(
            kubectl,
            "get",
            "events",
            "-n",
            namespace,
            "--field-selector",
            "involvedObject.name=pipeline",
        )["items"]
        reasons.update(e["reason"] for e in events)
        return expected <= reasons

    wait_for(recorded, 15, lambda: f"the Events {sorted(expected)} (seen: {sorted(reasons)})")
    printed = kubectl("get", "bpj", "pipeline", "-n", namespace).stdout
    assert "Succeeded" in printed


def _api_requests(verb: str, resource: str) -> float:
    """``bpj_api_requests_total`` of the in-process operator (this process's registry)."""
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "bpj_api_requests_total", {"verb": verb, "resource": resource}
    )
    return value or 0.0


def test_the_api_request_counter_rises_as_the_operator_reconciles(
    kubectl: Kubectl, namespace: str, bucket: str, submit: Submit
) -> None:
    calls = [("create", "jobs"), ("create", "configmaps"), ("patch", "bertpretrainjobs/status")]
    before = {call: _api_requests(*call) for call in calls}
    submit(manifest(bucket, "counted", records=True))
    wait_job(kubectl, namespace, "counted-train-1")
    wait_for(
        lambda: status(kubectl, namespace, "counted").get("phase") is not None,
        30,
        "the status write",
    )
    for call in calls:
        assert _api_requests(*call) > before[call], call


def test_slice_without_node_pool_reports_unschedulable(
    kubectl: Kubectl, namespace: str, bucket: str, submit: Submit
) -> None:
    doc = stuck_manifest(bucket, "nowhere")
    submit(doc)

    def unschedulable() -> bool:
        return (
            condition(status(kubectl, namespace, "nowhere"), "Trained").get("reason")
            == "Unschedulable"
        )

    wait_for(unschedulable, 90, "the Unschedulable condition")
    message = condition(status(kubectl, namespace, "nowhere"), "Trained")["message"]
    assert "tpu-v5-lite-podslice" in message and "4x4" in message
    assert "node affinity/selector" in message


def test_preemption_restarts_training_once_then_succeeds(
    kubectl: Kubectl,
    namespace: str,
    bucket: str,
    submit: Submit,
    annotate_pods: Callable[[str, str, dict[str, str]], None],
) -> None:
    annotate_pods(
        namespace,
        f"{names.LABEL_JOB}=preempt,{names.LABEL_ATTEMPT}=1",
        {kwok_config.PREEMPT: "true"},
    )
    submit(manifest(bucket, "preempt", records=True))
    st = wait_phase(kubectl, namespace, "preempt", "Succeeded")
    assert st["restarts"] == 1
    assert st["attempt"] == 2
    assert st["jobs"]["train"] == "preempt-train-2"
    events = kubectl_json(
        kubectl, "get", "events", "-n", namespace, "--field-selector", "involvedObject.name=preempt"
    )["items"]
    assert "Restarting" in {e["reason"] for e in events}


def test_exhausted_restarts_fail_the_job(
    kubectl: Kubectl,
    namespace: str,
    bucket: str,
    submit: Submit,
    annotate_pods: Callable[[str, str, dict[str, str]], None],
) -> None:
    annotate_pods(
        namespace,
        f"{names.LABEL_JOB}=flaky,{names.LABEL_STAGE}={names.STAGE_TRAIN}",
        {kwok_config.PREEMPT: "true"},
    )
    doc = manifest(bucket, "flaky", records=True, runPolicy={"maxRestarts": 1})
    submit(doc)
    st = wait_phase(kubectl, namespace, "flaky", "Failed")
    assert condition(st, "Failed")["reason"] == "MaxRestartsExceeded"
    assert st["restarts"] == 1
    train_jobs = kubectl_json(
        kubectl,
        "get",
        "jobs",
        "-n",
        namespace,
        "-l",
        f"{names.LABEL_JOB}=flaky,{names.LABEL_STAGE}=train",
    )["items"]
    assert len(train_jobs) == 2


def test_application_failure_is_not_retried(
    kubectl: Kubectl,
    namespace: str,
    bucket: str,
    submit: Submit,
    annotate_pods: Callable[[str, str, dict[str, str]], None],
) -> None:
    annotate_pods(
        namespace,
        f"{names.LABEL_JOB}=badinput,{names.LABEL_STAGE}={names.STAGE_TRAIN}",
        {
            kwok_config.FAIL_EXIT_CODE: "10",
            kwok_config.FAIL_MESSAGE: "part-00000: not a TFRecord file",
        },
    )
    submit(manifest(bucket, "badinput", records=True))
    st = wait_phase(kubectl, namespace, "badinput", "Failed")
    failed = condition(st, "Failed")
    assert failed["reason"] == "BadInput"
    assert "not a TFRecord file" in failed["message"]
    assert st.get("restarts") in (None, 0)


def test_a_bad_input_found_by_the_check_fails_the_job_before_any_stage(
    kubectl: Kubectl,
    namespace: str,
    bucket: str,
    submit: Submit,
    annotate_pods: Callable[[str, str, dict[str, str]], None],
) -> None:
    # A KWOK node runs no program: its check pod exits as the real one does on a missing
    # corpus (tests/nodes runs the real check, under the job's service account).
    found = f"check: spec.data.corpus[0]: no object matches gs://{bucket}/nothing-here/*.txt"
    annotate_pods(
        namespace,
        f"{names.LABEL_JOB}=nocorpus,{names.LABEL_STAGE}={names.STAGE_CHECK}",
        {kwok_config.FAIL_EXIT_CODE: "10", kwok_config.FAIL_MESSAGE: found},
    )
    doc = manifest(bucket, "nocorpus")
    doc["spec"]["data"]["corpus"] = [f"gs://{bucket}/nothing-here/*.txt"]
    submit(doc)
    st = wait_phase(kubectl, namespace, "nocorpus", "Failed")
    failed = condition(st, "Failed")
    assert (failed["reason"], failed["message"]) == ("BadInput", found)
    assert "inputs" not in st
    jobs = kubectl_json(kubectl, "get", "jobs", "-n", namespace)["items"]
    assert [j["metadata"]["name"] for j in jobs] == ["nocorpus-check"]
    (pod,) = kubectl_json(kubectl, "get", "pods", "-n", namespace, "-l", "job-name=nocorpus-check")[
        "items"
    ]
    assert pod["status"]["phase"] == "Failed", "failed once: bad input is not retried"


def test_suspend_stops_the_attempt_and_resume_starts_a_new_one(
    kubectl: Kubectl, namespace: str, bucket: str, submit: Submit
) -> None:
    # A slice no node pool offers keeps the attempt Pending for as long as we need.
    doc = stuck_manifest(bucket, "pausable")
    submit(doc)
    wait_job(kubectl, namespace, "pausable-train-1")
    kubectl(
        "patch",
        "bpj",
        "pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"runPolicy": {"suspend": true}}}',
    )
    st = wait_phase(kubectl, namespace, "pausable", "Suspended")
    assert condition(st, "Suspended")["status"] == "True"
    wait_for(
        lambda: not kubectl_exists(kubectl, "job", "pausable-train-1", namespace),
        60,
        "the attempt to be deleted",
    )
    kubectl(
        "patch",
        "bpj",
        "pausable",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"runPolicy": {"suspend": false}}}',
    )
    wait_job(kubectl, namespace, "pausable-train-2")
    st = status(kubectl, namespace, "pausable")
    assert st.get("restarts") in (None, 0)
    assert condition(st, "Suspended")["reason"] == "Resumed"


def test_kueue_queue_label_and_waiting_status(
    kubectl: Kubectl, namespace: str, bucket: str, submit: Submit
) -> None:
    submit(manifest(bucket, "queued", records=True, queueName="team-a"))
    wait_for(
        lambda: (
            condition(status(kubectl, namespace, "queued"), "Admitted").get("reason")
            == "WaitingForAdmission"
        ),
        60,
        "WaitingForAdmission",
    )
    job = kubectl_json(kubectl, "get", "job", "queued-train-1", "-n", namespace)
    assert job["metadata"]["labels"][names.LABEL_KUEUE_QUEUE] == "team-a"
    assert job["spec"]["suspend"] is True
    # Kueue admits by unsuspending; the operator must not suspend it again.
    kubectl(
        "patch",
        "job",
        "queued-train-1",
        "-n",
        namespace,
        "--type=merge",
        "-p",
        '{"spec": {"suspend": false}}',
    )
    st = wait_phase(kubectl, namespace, "queued", "Succeeded")
    assert condition(st, "Admitted")["status"] == "True"


def test_deleting_the_job_garbage_collects_its_children(
    kubectl: Kubectl, namespace: str, bucket: str, submit: Submit
) -> None:
    doc = stuck_manifest(bucket, "doomed")
    submit(doc)
    wait_job(kubectl, namespace, "doomed-train-1")
    kubectl("delete", "bpj", "doomed", "-n", namespace)

    def children_gone() -> bool:
        left = kubectl_json(
            kubectl,
            "get",
            "jobs,configmaps,services",
            "-n",
            namespace,
            "-l",
            f"{names.LABEL_JOB}=doomed",
        )["items"]
        return not left

    wait_for(children_gone, 60, "garbage collection of the children")


def _watch_events(resource: str, ours: bool) -> float:
    from prometheus_client import REGISTRY

    value = REGISTRY.get_sample_value(
        "bpj_watch_events_total", {"resource": resource, "ours": "true" if ours else "false"}
    )
    return value or 0.0


def _unschedulable_pod(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "nodeSelector": {"bpj.test/no-such-node": "true"},
            "containers": [{"name": "c", "image": "localhost/none:0"}],
        },
    }


def test_unrelated_pods_never_reach_the_operator(kubectl: Kubectl, namespace: str) -> None:
    """The API server filters the child watches: only labelled pods are sent at all."""
    unrelated_before = _watch_events("pods", ours=False)
    ours_before = _watch_events("pods", ours=True)
    # In a watched namespace, and many events of it: created, then labelled and annotated
    # with labels other than the job's.
    apply(kubectl, namespace, _unschedulable_pod("bystander", {"app": "web"}))
    for n in range(3):
        kubectl("annotate", "-n", namespace, "pod/bystander", f"bpj.test/touch={n}", "--overwrite")
    # Then a pod with the job label (of a job that does not exist: nothing is reconciled).
    # Its events come after the bystander's in the namespace's one watch stream, and kopf
    # starts handling events in the order they arrive; two rounds of them leave the
    # bystander's events every chance to have been handled, had they been sent.
    apply(kubectl, namespace, _unschedulable_pod("labelled", {names.LABEL_JOB: "nobody"}))
    wait_for(lambda: _watch_events("pods", ours=True) > ours_before, 30, "the labelled pod's event")
    seen = _watch_events("pods", ours=True)
    kubectl("annotate", "-n", namespace, "pod/labelled", "bpj.test/touch=1")
    wait_for(lambda: _watch_events("pods", ours=True) > seen, 30, "the labelled pod's update")
    assert _watch_events("pods", ours=False) == unrelated_before


def test_reconciles_read_a_running_jobs_children_from_the_watches(
    kubectl: Kubectl, namespace: str, bucket: str, submit: Submit, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the watches hold the Jobs its status names, a job's reconciles make no LIST."""
    from bert_pretrain_operator import handlers

    controller = handlers.runtime().controller
    assert controller._children is not None
    key = (namespace, "watched")
    listed: list[tuple[str, str]] = []
    from_watch: list[tuple[str, str]] = []
    list_children, watch_children = controller.kube.children, controller._children.get

    def spy_list(ns: str, job: str) -> Any:
        listed.append((ns, job))
        return list_children(ns, job)

    def spy_watch(k: tuple[str, str], named: Any) -> Any:
        held = watch_children(k, named)
        if held is not None:
            from_watch.append(k)
        return held

    monkeypatch.setattr(controller.kube, "children", spy_list)
    monkeypatch.setattr(controller._children, "get", spy_watch)
    submit(stuck_manifest(bucket, "watched"))
    # The pods' Unschedulable condition reached the status: it was read from the watch.
    wait_for(
        lambda: (
            condition(status(kubectl, namespace, "watched"), "Trained").get("reason")
            == "Unschedulable"
        ),
        90,
        "the Unschedulable condition",
    )
    lists_before, watched_before = listed.count(key), from_watch.count(key)
    # The resync (3 s here) reconciles the running job again and again.
    wait_for(lambda: from_watch.count(key) >= watched_before + 3, 30, "three more reconciles")
    assert listed.count(key) == lists_before, listed
