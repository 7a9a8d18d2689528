"""The operator's own API client, its credentials, its job cache and its work queue.

``Kube`` runs here against a stub HTTP server that records each request and
answers from a script, so the requests (method, path, body, content type) and the
``bpj_api_requests_total`` counter can be checked without a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import Configuration
from prometheus_client import REGISTRY

from bert_pretrain_operator import kube as kube_module
from bert_pretrain_operator.jobcache import JobCache
from bert_pretrain_operator.kube import ApiError, Kube, configuration, connection_info
from bert_pretrain_operator.workqueue import WorkQueue
from bert_trainer import contract

BPJ = f"/apis/{contract.API_GROUP}/{contract.API_VERSION}/namespaces/ns/{contract.PLURAL}"


@dataclass
class Stub:
    """Answers (status, body) by (method, path) and records every request."""

    answers: dict[tuple[str, str], list[tuple[int, Any]]] = field(default_factory=dict)
    headers: dict[int, dict[str, str]] = field(default_factory=dict)
    """Extra headers sent with every answer of a status (Retry-After with 429)."""
    seen: list[dict[str, Any]] = field(default_factory=list)
    url: str = ""

    def answer(self, method: str, path: str, *replies: tuple[int, Any]) -> None:
        self.answers[(method, path)] = list(replies)


@pytest.fixture
def stub() -> Iterator[Stub]:
    state = Stub()

    class Handler(BaseHTTPRequestHandler):
        def _reply(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length)) if length else None
            path = self.path.split("?", 1)[0]
            state.seen.append(
                {
                    "method": self.command,
                    "path": self.path,
                    "content_type": self.headers.get("Content-Type"),
                    "authorization": self.headers.get("Authorization"),
                    "body": body,
                }
            )
            replies = state.answers.get((self.command, path)) or [(404, {"reason": "NotFound"})]
            status, doc = replies.pop(0) if len(replies) > 1 else replies[0]
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in state.headers.get(status, {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PATCH = do_DELETE = _reply

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


def _config(url: str, token: str) -> Configuration:
    return Configuration(host=url, api_key={"BearerToken": f"Bearer {token}"})


def _kube(stub: Stub, token: str = "t0k3n") -> Kube:
    return Kube(lambda: _config(stub.url, token))


def _count(verb: str, resource: str) -> float:
    value = REGISTRY.get_sample_value(
        "bpj_api_requests_total", {"verb": verb, "resource": resource}
    )
    return value or 0.0


def test_every_request_is_counted_by_verb_and_resource(stub: Stub) -> None:
    stub.answer("GET", f"{BPJ}/a", (200, {"metadata": {"name": "a"}}))
    stub.answer("POST", "/apis/batch/v1/namespaces/ns/jobs", (409, {"reason": "AlreadyExists"}))
    kube = _kube(stub)
    before = {
        key: _count(*key)
        for key in [("get", contract.PLURAL), ("create", "jobs"), ("get", "missing")]
    }
    assert kube.read_job("ns", "a") == {"metadata": {"name": "a"}}
    assert kube.read_job("ns", "gone") is None  # 404
    job = {"kind": "Job", "metadata": {"name": "a-train-1", "namespace": "ns"}}
    assert kube.create(job) is False  # 409: an earlier reconcile made it
    assert _count("get", contract.PLURAL) == before[("get", contract.PLURAL)] + 2
    assert _count("create", "jobs") == before[("create", "jobs")] + 1
    assert kube.requests == 3
    assert {s["authorization"] for s in stub.seen} == {"Bearer t0k3n"}


def test_the_status_patch_names_the_version_it_was_decided_on(stub: Stub) -> None:
    stored = {"metadata": {"name": "a", "resourceVersion": "8"}, "status": {"phase": "Pending"}}
    stub.answer("PATCH", f"{BPJ}/a/status", (200, stored))
    kube = _kube(stub)
    assert kube.patch_status("ns", "a", {"phase": "Pending"}, resource_version="7") == stored
    (request,) = stub.seen
    assert request["content_type"] == "application/merge-patch+json"
    assert request["body"] == {"metadata": {"resourceVersion": "7"}, "status": {"phase": "Pending"}}

    stub.answer("PATCH", f"{BPJ}/a/status", (409, {"reason": "Conflict", "message": "modified"}))
    with pytest.raises(ApiError) as err:
        kube.patch_status("ns", "a", {"phase": "Pending"}, resource_version="7")
    assert err.value.status == 409


def test_a_new_config_map_is_created_first_and_an_old_one_patched_first(stub: Stub) -> None:
    cms = "/api/v1/namespaces/ns/configmaps"
    manifest = {
        "kind": "ConfigMap",
        "metadata": {"name": "a-trainer-config", "namespace": "ns"},
        "data": {"config.json": "{}"},
    }
    kube = _kube(stub)
    stub.answer("POST", cms, (201, manifest))
    kube.write_config_map(manifest, exists=False)
    assert [(s["method"], s["path"]) for s in stub.seen] == [("POST", cms)]

    # It existed after all (a previous operator process made it): patched to the current spec.
    stub.seen.clear()
    stub.answer("POST", cms, (409, {}))
    stub.answer("PATCH", f"{cms}/a-trainer-config", (200, manifest))
    kube.write_config_map(manifest, exists=False)
    assert [s["method"] for s in stub.seen] == ["POST", "PATCH"]
    assert stub.seen[1]["body"] == {"data": {"config.json": "{}"}}

    # A later stage: patched; created if someone deleted it.
    stub.seen.clear()
    stub.answer("PATCH", f"{cms}/a-trainer-config", (404, {}))
    stub.answer("POST", cms, (201, manifest))
    kube.write_config_map(manifest, exists=True)
    assert [s["method"] for s in stub.seen] == ["PATCH", "POST"]


def _throttled(verb: str, resource: str) -> float:
    value = REGISTRY.get_sample_value(
        "bpj_api_throttled_total", {"verb": verb, "resource": resource}
    )
    return value or 0.0


def test_a_throttled_create_is_sent_again_after_retry_after(stub: Stub) -> None:
    manifest = {"kind": "Job", "metadata": {"name": "a-train-1", "namespace": "ns"}}
    path = "/apis/batch/v1/namespaces/ns/jobs"
    stub.headers[429] = {"Retry-After": "1"}
    stub.answer("POST", path, (429, {"reason": "TooManyRequests"}), (201, manifest))
    kube, before = _kube(stub), _throttled("create", "jobs")
    started = time.monotonic()
    assert kube.create(manifest) is True  # a POST: not idempotent, retried all the same
    assert time.monotonic() - started >= 1.0  # the server's Retry-After, waited out
    assert [s["method"] for s in stub.seen] == ["POST", "POST"]
    assert _throttled("create", "jobs") - before == 1


def test_throttling_that_lasts_is_an_api_error_after_the_retries(
    stub: Stub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(kube_module, "THROTTLED_RETRIES", 2)
    stub.headers[429] = {"Retry-After": "1"}
    stub.answer("PATCH", f"{BPJ}/a/status", (429, {"reason": "TooManyRequests"}))
    kube, before = _kube(stub), _throttled("patch", "bertpretrainjobs/status")
    with pytest.raises(ApiError) as err:
        kube.patch_status("ns", "a", {"phase": "Pending"}, resource_version="7")
    assert err.value.status == 429
    assert len(stub.seen) == 3  # the first answer and two retries
    assert _throttled("patch", "bertpretrainjobs/status") - before == 2


def test_expired_credentials_are_read_again_once(stub: Stub) -> None:
    tokens = iter(["old", "new", "new"])
    stub.answer("GET", f"{BPJ}/a", (401, {}), (200, {"metadata": {"name": "a"}}))
    kube = Kube(lambda: _config(stub.url, next(tokens)))
    assert kube.read_job("ns", "a") == {"metadata": {"name": "a"}}
    assert [s["authorization"] for s in stub.seen] == ["Bearer old", "Bearer new"]


def test_kubeconfig_paths_data_token_file_and_exec_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The official client's loaders, as kube.py calls them: one case per variant."""
    (tmp_path / "pki").mkdir()
    for name in ("ca", "a.crt", "a.key"):  # the loader checks that the files exist
        (tmp_path / "pki" / name).write_text("-----BEGIN PLACEHOLDER-----\n")
    (tmp_path / "token").write_text("from-file\n")
    plugin = tmp_path / "plugin.sh"
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {"token": "from-plugin", "expirationTimestamp": "2099-01-01T00:00:00Z"},
    }
    plugin.write_text(f"#!/bin/sh\necho '{json.dumps(credential)}'\n")
    plugin.chmod(plugin.stat().st_mode | stat.S_IEXEC)
    ca_pem = b"-----BEGIN CERTIFICATE-----\n"
    ca = base64.b64encode(ca_pem).decode()
    exec_user = {"apiVersion": "client.authentication.k8s.io/v1", "command": "./plugin.sh"}
    config = {
        "current-context": "files",
        "contexts": [
            {"name": "files", "context": {"cluster": "c", "user": "files"}},
            {"name": "token-file", "context": {"cluster": "d", "user": "token-file"}},
            {"name": "exec", "context": {"cluster": "d", "user": "exec"}},
            {"name": "basic", "context": {"cluster": "d", "user": "basic"}},
        ],
        "clusters": [
            {
                "name": "c",
                "cluster": {"server": "https://c:6443", "certificate-authority": "pki/ca"},
            },
            {
                "name": "d",
                "cluster": {
                    "server": "https://d",
                    "certificate-authority-data": ca,
                    "proxy-url": "http://proxy:3128",
                    "tls-server-name": "kubernetes.default",
                },
            },
        ],
        "users": [
            {
                "name": "files",
                "user": {"client-certificate": "pki/a.crt", "client-key": "pki/a.key"},
            },
            {"name": "token-file", "user": {"tokenFile": "token"}},
            {"name": "exec", "user": {"exec": exec_user}},
            {"name": "basic", "user": {"username": "u", "password": "p"}},
        ],
    }
    # The first of several paths wins; the second only adds an unused context.
    first, second = tmp_path / "config", tmp_path / "other"
    second.write_text(yaml.safe_dump({"contexts": [], "clusters": [], "users": []}))
    first.write_text(yaml.safe_dump(config))
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}")

    info = connection_info()
    assert info.server == "https://c:6443"
    assert info.ca_path == str(tmp_path / "pki" / "ca")  # relative to the kubeconfig
    assert info.certificate_path == str(tmp_path / "pki" / "a.crt")
    assert info.private_key_path == str(tmp_path / "pki" / "a.key")
    assert info.token is None

    for context, token in [("token-file", "from-file"), ("exec", "from-plugin")]:
        first.write_text(yaml.safe_dump({**config, "current-context": context}))
        info = connection_info()
        assert (info.server, info.scheme, info.token) == ("https://d", "Bearer", token)
        assert info.ca_path is not None and Path(info.ca_path).read_bytes() == ca_pem
        assert info.proxy_url == "http://proxy:3128"
        assert configuration().tls_server_name == "kubernetes.default"

    monkeypatch.setenv("NO_PROXY", "d")  # as the client's own pool does
    assert connection_info().proxy_url is None

    first.write_text(yaml.safe_dump({**config, "current-context": "basic"}))
    info = connection_info()
    assert (info.scheme, info.token) == ("Basic", base64.b64encode(b"u:p").decode())


def test_no_usable_credentials_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    with pytest.raises(kube_module.ConfigError, match=str(missing)):
        configuration(str(missing))


def _body(name: str, version: str, phase: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"namespace": "ns", "name": name, "resourceVersion": version}
    }
    if phase:
        body["status"] = {"phase": phase}
    return body


def test_the_job_cache_keeps_the_newest_copy() -> None:
    cache = JobCache()
    assert cache.put(_body("a", "5"))
    assert not cache.put(_body("a", "5"))  # the echo of a write whose answer is cached
    assert not cache.put(_body("a", "4", "Pending"))  # a late, older event
    assert cache.get(("ns", "a")) == _body("a", "5")
    assert cache.put(_body("a", "12", "Training"))  # numerically newer, not as text
    copy = cache.get(("ns", "a"))
    assert copy is not None and copy["status"] == {"phase": "Training"}
    copy["status"]["phase"] = "changed by a reconcile"
    assert cache.get(("ns", "a")) == _body("a", "12", "Training")  # each get is a copy
    assert cache.put(_body("a", "not-a-number"))  # opaque versions: always taken
    cache.drop(("ns", "a"))
    assert cache.get(("ns", "a")) is None and len(cache) == 0


def test_the_resync_set_is_the_unfinished_jobs_of_the_cache() -> None:
    from bert_pretrain_operator.jobcache import FINISHED_PHASES
    from bert_pretrain_operator.reconcile.decide import FINAL_PHASES

    assert {p.value for p in FINAL_PHASES} == FINISHED_PHASES
    cache = JobCache()
    cache.put(_body("new", "1"))
    cache.put(_body("running", "2", "Training"))
    cache.put(_body("done", "3", "Succeeded"))
    cache.put(_body("failed", "4", "Failed"))
    assert sorted(cache.unfinished()) == [("ns", "new"), ("ns", "running")]
    cache.put(_body("running", "5", "Succeeded"))  # finishes
    cache.put(_body("failed", "6", "Pending"))  # a cleared status starts it again
    assert sorted(cache.unfinished()) == [("ns", "failed"), ("ns", "new")]
    cache.drop(("ns", "new"))
    assert cache.unfinished() == [("ns", "failed")]


def test_a_finished_job_is_reconciled_without_a_request(stub: Stub) -> None:
    from bert_pretrain_operator.controller import Controller
    from bert_pretrain_operator.settings import Settings

    manifest = yaml.safe_load((Path(__file__).parents[2] / "examples/quickstart.yaml").read_text())
    manifest["metadata"].update(namespace="ns", resourceVersion="9", uid="u-1", generation=1)
    manifest["status"] = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "completionTime": "2026-12-01T00:00:00Z",
    }
    cache = JobCache()
    cache.put(manifest)
    controller = Controller(_kube(stub), Settings(), cache=cache)
    decision = controller.reconcile("ns", manifest["metadata"]["name"])
    assert decision is not None and decision.status.phase is not None
    assert decision.status.phase.value == "Succeeded"
    assert stub.seen == []  # no children, no Events, no status write


def test_the_work_queue_takes_new_jobs_first_and_each_key_once() -> None:
    async def scenario() -> list[tuple[str, str]]:
        queue = WorkQueue()
        for name in ("old-1", "old-2", "old-3"):
            queue.add(("ns", name))
        queue.add(("ns", "new-1"), urgent=True)
        queue.add(("ns", "old-2"), urgent=True)  # a waiting key moves up
        queue.add(("ns", "new-1"))  # already waiting: not added twice
        queue.add(("ns", "new-2"), urgent=True)
        assert len(queue) == 5
        taken: list[tuple[str, str]] = []
        all_taken = asyncio.Event()

        async def process(key: tuple[str, str]) -> None:
            taken.append(key)
            if len(taken) == 5:
                all_taken.set()

        worker = asyncio.create_task(queue.run_worker(process))
        await asyncio.wait_for(all_taken.wait(), 5)
        worker.cancel()
        assert len(queue) == 0  # nothing left over: each key was waiting once
        return taken

    order = [name for _, name in asyncio.run(scenario())]
    assert order == ["new-1", "old-2", "new-2", "old-1", "old-3"]


@pytest.mark.parametrize(
    ("namespaces", "exact"),
    [
        ("", False),  # every namespace
        ("team-a", True),
        ("team-a,team-b", True),
        ("team-*", False),
        ("team-a,team-?", False),
        ("!kube-system", False),
    ],
)
def test_exact_namespaces_are_plain_names_only(namespaces: str, exact: bool) -> None:
    from bert_pretrain_operator.settings import Settings

    settings = Settings.from_env({"BPJ_NAMESPACES": namespaces})
    assert settings.exact_namespaces is exact


def test_children_come_from_the_watch_only_when_it_holds_every_named_job() -> None:
    from bert_pretrain_operator.children import Children, slim_job, slim_pod

    job = {
        "metadata": {"name": "a-train-1", "uid": "u", "labels": {"x": "y"}, "managedFields": []},
        "spec": {"parallelism": 2, "template": {"spec": {"containers": []}}},
        "status": {"active": 2},
    }
    pod = {
        "metadata": {"name": "a-train-1-0", "labels": {}, "annotations": {"big": "x" * 1000}},
        "spec": {"containers": [{"name": "trainer"}]},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled"}], "hostIP": "1"},
    }
    assert slim_job(job) == {
        "metadata": {"name": "a-train-1", "uid": "u", "labels": {"x": "y"}},
        "spec": {"parallelism": 2},
        "status": {"active": 2},
    }
    assert slim_pod(pod) == {
        "metadata": {"name": "a-train-1-0", "labels": {}},
        "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled"}]},
    }
    held = {("ns", "a"): ([slim_job(job)], [slim_pod(pod)])}
    children = Children(lambda key: held.get(key, ([], [])))
    assert children.get(("ns", "a"), ["a-train-1"]) == held["ns", "a"]
    assert children.get(("ns", "a"), []) == held["ns", "a"]
    assert children.get(("ns", "a"), ["a-train-1", "a-export"]) is None  # not seen yet
    assert children.get(("ns", "b"), ["b-train-1"]) is None


def test_children_snapshots_are_taken_on_the_event_loop() -> None:
    from bert_pretrain_operator.children import Children, pack

    async def scenario() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        index = {("ns", "a"): [pack({"metadata": {"name": "a-train-1"}})]}
        children = Children.of_indices(loop, index, {})
        # From a worker thread, as a reconcile asks.
        found = await asyncio.to_thread(children.get, ("ns", "a"), ["a-train-1"])
        missing = await asyncio.to_thread(children.get, ("ns", "b"), ["b-train-1"])
        return found, missing

    found, missing = asyncio.run(scenario())
    assert found == ([{"metadata": {"name": "a-train-1"}}], [])
    assert missing is None


def test_a_running_job_lists_its_children_when_the_watch_lags(stub: Stub) -> None:
    from bert_pretrain_operator.children import Children
    from bert_pretrain_operator.controller import Controller
    from bert_pretrain_operator.settings import Settings

    manifest = yaml.safe_load((Path(__file__).parents[2] / "examples/quickstart.yaml").read_text())
    name = manifest["metadata"]["name"]
    manifest["metadata"].update(namespace="ns", resourceVersion="9", uid="u-1", generation=1)
    manifest["spec"]["data"] = {
        "tfrecords": "gs://bucket/r/*.tfrecord",
        "vocab": "gs://bucket/vocab.txt",
    }
    manifest["status"] = {
        "phase": "Training",
        "observedGeneration": 1,
        "startTime": "2026-12-01T00:00:00Z",
        "attempt": 1,
        "jobs": {"train": f"{name}-train-1"},
        "inputs": {"vocabSize": 6},
    }
    from bert_pretrain_operator.render import names

    labels = {names.LABEL_JOB: name, names.LABEL_STAGE: names.STAGE_TRAIN, names.LABEL_ATTEMPT: "1"}
    train_job = {
        "metadata": {"name": f"{name}-train-1", "uid": "j", "labels": labels},
        "spec": {"parallelism": 1},
        "status": {"active": 1},
    }
    stub.answer("GET", "/apis/batch/v1/namespaces/ns/jobs", (200, {"items": [train_job]}))
    stub.answer("GET", "/api/v1/namespaces/ns/pods", (200, {"items": []}))
    stub.answer("GET", "/api/v1/namespaces/ns/events", (200, {"items": []}))
    stub.answer("PATCH", f"{BPJ}/{name}/status", (200, manifest))
    cache = JobCache()
    cache.put(manifest)

    # The watch has not delivered the training Job the status names.
    controller = Controller(
        _kube(stub), Settings(), cache=cache, children=Children(lambda key: ([], []))
    )
    decision = controller.reconcile("ns", name)
    paths = [s["path"].split("?")[0] for s in stub.seen if s["method"] == "GET"]
    assert "/apis/batch/v1/namespaces/ns/jobs" in paths, json.dumps(stub.seen)[:3000]
    # The LIST found the Job running: nothing is created again.
    assert decision is not None and not decision.create
    assert not [s for s in stub.seen if s["method"] == "POST"]


def test_the_check_job_comes_first_and_its_report_is_kept_in_the_status(stub: Stub) -> None:
    """The check reads the inputs as the job; the operator keeps what its pod reported."""
    from bert_pretrain_operator.api import BertPretrainJob
    from bert_pretrain_operator.controller import Controller
    from bert_pretrain_operator.render import names
    from bert_pretrain_operator.settings import Settings

    manifest = yaml.safe_load((Path(__file__).parents[2] / "examples/quickstart.yaml").read_text())
    name = manifest["metadata"]["name"]
    manifest["metadata"].update(namespace="ns", resourceVersion="3", uid="u-7", generation=1)
    manifest["spec"]["data"] = {"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/vocab.txt"}
    stub.answer("POST", "/api/v1/namespaces/ns/configmaps", (201, {}))
    stub.answer("PATCH", f"/api/v1/namespaces/ns/configmaps/{name}-trainer-config", (200, {}))
    stub.answer("POST", "/apis/batch/v1/namespaces/ns/jobs", (201, {}))
    stub.answer("POST", "/api/v1/namespaces/ns/events", (201, {}))
    stub.answer("PATCH", f"{BPJ}/{name}/status", (200, manifest))
    cache = JobCache()
    cache.put(manifest)
    settings = Settings()
    controller = Controller(_kube(stub), settings, cache=cache)
    decision = controller.reconcile("ns", name)
    assert decision is not None and decision.create == (("check", 0),)
    (config_map,) = [s["body"] for s in stub.seen if s["path"].endswith("/configmaps")]
    config = json.loads(config_map["data"]["config.json"])
    assert set(config) == {"job", "check"}, "no model is rendered before the inputs are known"
    assert config["check"] == {"tfrecords": "gs://bkt/r/*.tfrecord", "vocab": "gs://bkt/vocab.txt"}
    (check,) = [s["body"] for s in stub.seen if s["path"].endswith("/jobs")]
    pod = check["spec"]["template"]["spec"]
    assert check["metadata"]["name"] == f"{name}-check"
    assert pod["serviceAccountName"] == settings.trainer_service_account
    assert pod["containers"][0]["args"][:1] == ["check"]
    (patch,) = [s for s in stub.seen if s["method"] == "PATCH"]
    assert "inputs" not in patch["body"]["status"]

    # The check pod succeeded and reported; the next reconcile keeps what it found.
    manifest["status"] = patch["body"]["status"]
    manifest["metadata"]["resourceVersion"] = "4"
    labels = {names.LABEL_JOB: name, names.LABEL_STAGE: names.STAGE_CHECK}
    done = {
        "metadata": {"name": f"{name}-check", "uid": "c", "labels": labels},
        "spec": {"parallelism": 1},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    pod_status = {
        "phase": "Succeeded",
        "containerStatuses": [
            {"state": {"terminated": {"exitCode": 0, "message": '{"vocabSize": 6}'}}}
        ],
    }
    pod_doc = {
        "metadata": {"name": f"{name}-check-x", "labels": {"job-name": f"{name}-check"}},
        "status": pod_status,
    }
    stub.answer("GET", "/apis/batch/v1/namespaces/ns/jobs", (200, {"items": [done]}))
    stub.answer("GET", "/api/v1/namespaces/ns/pods", (200, {"items": [pod_doc]}))
    stub.answer("GET", "/api/v1/namespaces/ns/events", (200, {"items": []}))
    stub.seen.clear()
    cache.put(manifest)
    decision = controller.reconcile("ns", name)
    assert decision is not None and decision.create == (("train", 1),)
    (patch,) = [s for s in stub.seen if s["method"] == "PATCH" and "/status" in s["path"]]
    assert patch["body"]["status"]["inputs"] == {"vocabSize": 6}
    (rewritten,) = [
        s["body"] for s in stub.seen if s["method"] == "PATCH" and "configmaps" in s["path"]
    ]
    config = json.loads(rewritten["data"]["config.json"])
    assert config["train"]["model"]["vocabSize"] == 6
    assert BertPretrainJob.from_manifest({**manifest, "status": patch["body"]["status"]})


def test_a_check_report_gives_the_resolved_inputs() -> None:
    from bert_pretrain_operator.api import Dimensions
    from bert_pretrain_operator.render.trainer_config import ResolvedInputs
    from bert_trainer.config import CheckedDimensions, CheckReport

    report = CheckReport(
        vocab_size=119547,
        dimensions=CheckedDimensions(
            hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072
        ),
    )
    resolved = ResolvedInputs(vocab_size=119547, dimensions=Dimensions.of(12, 768))
    assert ResolvedInputs.from_report(report) == resolved
    assert ResolvedInputs.from_report(CheckReport()) == ResolvedInputs()
