"""Guardrails: the chart's ValidatingAdmissionPolicy refuses what a namespace's limits forbid.

Team A's limits come from the chart's values (`guardrails.namespaces`), rendered as its
`bpj-guardrails` ConfigMap (tests/selfservice/conftest.py, TEAM_A_LIMITS). Each case
breaks exactly one limit of an otherwise conforming job; the API server refuses it at
`kubectl apply` (server-side dry run) with a message naming the policy, the field, the
limit and the ConfigMap.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.selfservice.conftest import (
    GUARDRAILS_CONFIGMAP,
    TEAM_A_GROUP,
    Platform,
    apply_objects,
    conforming_job,
    dry_run,
)
from tests.support import Kubectl, kubectl_json, wait_for

ALICE = ("--as=alice", f"--as-group={TEAM_A_GROUP}")
Spec = dict[str, Any]


def _set(path: str, value: Any) -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        *parents, leaf = path.split(".")
        node = spec
        for key in parents:
            node = node[key]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value

    return change


def _tpu(accelerator: str, topology: str, batch: int) -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        spec["tpu"].update(accelerator=accelerator, topology=topology)
        spec["training"]["globalBatchSize"] = batch

    return change


def _corpus(*uris: str) -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        spec["data"] = {"corpus": list(uris), "vocab": spec["data"]["vocab"]}

    return change


def _checkpoint(uri: str, field: str = "initCheckpoint") -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        spec["model"] = {field: uri}
        del spec["data"]["vocab"]  # the checkpoint's own is used

    return change


def _phases(*steps: int) -> Callable[[Spec], None]:
    """Phases of ``steps`` each (corpus instead of records: phases prepare their own)."""

    def change(spec: Spec) -> None:
        spec["data"] = {
            "corpus": ["gs://team-a-bucket/corpus/*.txt"],
            "vocab": spec["data"]["vocab"],
        }
        spec["training"] = {
            "phases": [
                {
                    "trainSteps": n,
                    "maxSeqLength": 128 * (i + 1),
                    "maxPredictionsPerSeq": 20 * (i + 1),
                    "globalBatchSize": 16,
                }
                for i, n in enumerate(steps)
            ]
        }

    return change


#: case -> (how the conforming job is changed, the refusal's message after "denied request: ")
VIOLATIONS: dict[str, tuple[Callable[[Spec], None], str]] = {
    "accelerator": (
        _tpu("tpu-v5p-slice", "2x2x2", 16),
        "spec.tpu.accelerator: tpu-v5p-slice is not allowed in this namespace; "
        "allowedAccelerators: tpu-v5-lite-podslice, tpu-v6e-slice",
    ),
    "topology": (
        _tpu("tpu-v6e-slice", "4x8", 32),
        "spec.tpu.topology: tpu-v6e-slice 4x8 is not allowed in this namespace; "
        "allowedTopologies: 2x2, 2x4, 4x4, tpu-v6e-slice/8x8",
    ),
    "max chips": (
        _tpu("tpu-v6e-slice", "8x8", 64),
        "spec.tpu: 64 chips (tpu-v6e-slice 8x8) exceeds this namespace's maxChips 16",
    ),
    "spot": (
        _set("tpu.spot", False),
        "spec.tpu.spot: must be true in this namespace (requireSpot)",
    ),
    "train steps": (
        _set("training.trainSteps", 200000),
        "spec.training.trainSteps: 200000 exceeds this namespace's maxTrainSteps 100000",
    ),
    "train steps over the phases": (
        # Each phase is within the limit; the run is not.
        _phases(90000, 20000),
        "spec.training.phases[].trainSteps: 110000 steps in all exceeds this namespace's "
        "maxTrainSteps 100000",
    ),
    "deadline missing": (
        _set("runPolicy.activeDeadlineSeconds", None),
        "spec.runPolicy.activeDeadlineSeconds: required in this namespace, "
        "at most maxActiveDeadlineSeconds 86400",
    ),
    "deadline too long": (
        _set("runPolicy.activeDeadlineSeconds", 90000),
        "spec.runPolicy.activeDeadlineSeconds: 90000 exceeds this namespace's "
        "maxActiveDeadlineSeconds 86400",
    ),
    "output bucket": (
        # A prefix of the allowed bucket's name is another bucket.
        _set("output", "gs://team-a-bucket-old/runs/fits"),
        "spec.output: gs://team-a-bucket-old/runs/fits is not under this namespace's "
        "allowedOutputPrefixes gs://team-a-bucket/",
    ),
    "vocab of another team": (
        _set("data.vocab", "gs://team-b-bucket/private/vocab.txt"),
        "spec.data.vocab: gs://team-b-bucket/private/vocab.txt is not under this namespace's "
        "allowedInputPrefixes gs://team-a-bucket/, gs://public-corpora/",
    ),
    "records in a look-alike bucket": (
        _set("data.tfrecords", "gs://team-a-bucket-old/records/*.tfrecord"),
        "spec.data.tfrecords: gs://team-a-bucket-old/records/*.tfrecord is not under this "
        "namespace's allowedInputPrefixes gs://team-a-bucket/, gs://public-corpora/",
    ),
    "held-out records of another team": (
        _set("data.evalTfrecords", "gs://team-b-bucket/eval/*.tfrecord"),
        "spec.data.evalTfrecords: gs://team-b-bucket/eval/*.tfrecord is not under this "
        "namespace's allowedInputPrefixes gs://team-a-bucket/, gs://public-corpora/",
    ),
    "one corpus entry outside": (
        _corpus("gs://public-corpora/wiki/*.txt", "gs://team-b-bucket/books/*.txt"),
        "spec.data.corpus: gs://team-b-bucket/books/*.txt is not under this namespace's "
        "allowedInputPrefixes gs://team-a-bucket/, gs://public-corpora/",
    ),
    "checkpoint of another team": (
        _checkpoint("gs://team-b-bucket/ckpt/bert_model.ckpt"),
        "spec.model.initCheckpoint: gs://team-b-bucket/ckpt/bert_model.ckpt is not under this "
        "namespace's allowedInputPrefixes gs://team-a-bucket/, gs://public-corpora/",
    ),
    "output of another team's job": (
        _checkpoint("gs://team-b-bucket/runs/base", "initFromOutput"),
        "spec.model.initFromOutput: gs://team-b-bucket/runs/base is not under this "
        "namespace's allowedInputPrefixes gs://team-a-bucket/, gs://public-corpora/",
    ),
    "image": (
        _set("image", "docker.io/someone/trainer:latest"),
        "spec.image: docker.io/someone/trainer:latest is not under this namespace's "
        "allowedImagePrefixes ghcr.io/bert-pretrain-operator/",
    ),
    "queue missing": (
        _set("queueName", None),
        "spec.queueName: required, and must be one of this namespace's allowedQueueNames "
        "team-a-tpu",
    ),
    "other queue": (
        _set("queueName", "team-b-tpu"),
        "spec.queueName: team-b-tpu is not one of this namespace's allowedQueueNames team-a-tpu",
    ),
}


def _violating(case: str) -> dict[str, Any]:
    doc = conforming_job()
    VIOLATIONS[case][0](doc["spec"])
    return doc


def test_a_conforming_job_is_admitted(kubectl: Kubectl, platform: Platform) -> None:
    out = dry_run(kubectl, platform.team_a, conforming_job(), *ALICE)
    assert out.returncode == 0, out.stderr
    # Left-out optional fields are fine: the operator's default image, 2x2 on v5e.
    doc = conforming_job()
    del doc["spec"]["image"]
    _tpu("tpu-v5-lite-podslice", "2x2", 16)(doc["spec"])
    out = dry_run(kubectl, platform.team_a, doc, *ALICE)
    assert out.returncode == 0, out.stderr
    # A corpus in a shared bucket the namespace may read, beside its own vocab.
    doc = conforming_job()
    _corpus("gs://public-corpora/wiki/*.txt", "gs://team-a-bucket/notes/*.txt")(doc["spec"])
    out = dry_run(kubectl, platform.team_a, doc, *ALICE)
    assert out.returncode == 0, out.stderr
    # Two phases whose steps, together, are within maxTrainSteps.
    doc = conforming_job()
    _phases(90000, 10000)(doc["spec"])
    out = dry_run(kubectl, platform.team_a, doc, *ALICE)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("case", list(VIOLATIONS))
def test_each_guardrail_refuses_its_violation(
    kubectl: Kubectl, platform: Platform, case: str
) -> None:
    out = dry_run(kubectl, platform.team_a, _violating(case), *ALICE)
    assert out.returncode != 0, f"{case}: admitted"
    message = VIOLATIONS[case][1]
    source = f" (ConfigMap {platform.team_a}/{GUARDRAILS_CONFIGMAP})"
    policy = platform.policy
    expected = (
        f"ValidatingAdmissionPolicy '{policy}' with binding "
        f"'{policy}' denied request: {policy}: {message}{source}"
    )
    assert expected in out.stderr, out.stderr
    assert "(Forbidden)" in out.stderr


def test_namespaces_without_limits_are_open(kubectl: Kubectl, platform: Platform) -> None:
    """parameterNotFoundAction Allow: no ConfigMap, no limits; team B is not even selected."""
    for ns in (platform.open, platform.team_b):
        for case in ("max chips", "spot", "output bucket", "queue missing"):
            out = dry_run(kubectl, ns, _violating(case))
            assert out.returncode == 0, f"{ns}, {case}: {out.stderr}"


def test_only_spec_changes_are_checked_so_tightening_never_wedges_a_job(
    kubectl: Kubectl, platform: Platform
) -> None:
    ns = platform.team_a
    doc = conforming_job("tightened")
    kubectl("apply", "-n", ns, *ALICE, "-f", "-", stdin=json.dumps(doc))
    # The platform team lowers maxTrainSteps below this job's trainSteps.
    kubectl(
        "patch", "configmap", GUARDRAILS_CONFIGMAP, "-n", ns,
        "--type=merge", "-p", '{"data": {"maxTrainSteps": "500"}}',
    )  # fmt: skip
    try:
        edited = copy.deepcopy(doc)
        edited["spec"]["training"]["learningRate"] = 0.0002

        def spec_edit_refused() -> bool:
            out = dry_run(kubectl, ns, edited, *ALICE)
            return out.returncode != 0 and "maxTrainSteps 500" in out.stderr

        wait_for(spec_edit_refused, 30, "the lowered maxTrainSteps to apply")
        # Metadata and status writes (kopf's finalizers and annotations, the operator's
        # status) go through: the job can still be run, labelled and deleted.
        kubectl("label", "bpj", "tightened", "-n", ns, "team=a")
        kubectl(
            "patch", "bpj", "tightened", "-n", ns, "--subresource=status",
            "--type=merge", "-p", '{"status": {"phase": "Training"}}',
        )  # fmt: skip
        kubectl("delete", "bpj", "tightened", "-n", ns, *ALICE)
    finally:
        kubectl(
            "patch", "configmap", GUARDRAILS_CONFIGMAP, "-n", ns,
            "--type=merge", "-p", '{"data": {"maxTrainSteps": "100000"}}',
        )  # fmt: skip
    wait_for(
        lambda: dry_run(kubectl, ns, conforming_job()).returncode == 0,
        30,
        "maxTrainSteps to be restored",
    )


def _configmap_write(kubectl: Kubectl, ns: str, *args: str) -> Any:
    return kubectl(*args, "-n", ns, check=False)


def test_teams_cannot_change_their_own_guardrails(kubectl: Kubectl, platform: Platform) -> None:
    """`edit` may write ConfigMaps; the params policy keeps the guardrails one to the platform."""
    ns = platform.team_a
    name = GUARDRAILS_CONFIGMAP
    rbac = kubectl("auth", "can-i", "patch", "configmaps", "-n", ns, *ALICE, check=False)
    assert rbac.stdout.strip() == "yes", "edit grants ConfigMaps; admission must stop this"
    attempts = {
        "patch": (
            "patch", "configmap", name, *ALICE, "--type=merge", "-p",
            '{"data": {"maxChips": "256"}}',
        ),
        "delete": ("delete", "configmap", name, *ALICE),
        "remove a key": (
            "patch", "configmap", name, *ALICE, "--type=json", "-p",
            '[{"op": "remove", "path": "/data/requireSpot"}]',
        ),
    }  # fmt: skip
    for what, args in attempts.items():
        out = _configmap_write(kubectl, ns, *args)
        assert out.returncode != 0, f"alice could {what} the guardrails"
        assert (
            f"ValidatingAdmissionPolicy '{platform.policy}-params'" in out.stderr
            and f"ConfigMap {ns}/{name} holds this namespace's guardrails; only who may "
            f"update the ValidatingAdmissionPolicy {platform.policy} (the platform team) "
            "may create, change or delete it"
            in out.stderr
        ), out.stderr
    # Nor create one where there is none (which would lift a Deny for missing limits).
    created = kubectl(
        "create", "configmap", name, "-n", platform.team_b, "--as=dave",
        "--as-group=team-b-devs", "--from-literal=maxChips=1024", check=False,
    )  # fmt: skip
    assert created.returncode != 0 and f"{platform.policy}-params" in created.stderr
    data = kubectl_json(kubectl, "get", "configmap", name, "-n", ns)["data"]
    assert data["maxChips"] == "16" and data["requireSpot"] == "true"


BAD_PARAMS = {
    "unknown key": ({"maxchips": "16"}, "unknown key(s) maxchips; known: allowedAccelerators"),
    "not a number": (
        {"maxChips": "16 chips"},
        "maxChips, maxTrainSteps and maxActiveDeadlineSeconds must be positive integers",
    ),
    "not a boolean": ({"requireSpot": "yes"}, 'requireSpot must be "true" or "false"'),
    "unknown accelerator": (
        {"allowedAccelerators": "tpu-v5e"},
        "allowedAccelerators must list accelerators of tpu-v4-podslice",
    ),
    "topology": ({"allowedTopologies": "4 by 4"}, "allowedTopologies entries are AxB"),
    "bucket without slash": (
        {"allowedOutputPrefixes": "gs://team-a-bucket"},
        "allowedOutputPrefixes entries are gs:// prefixes ending in /",
    ),
    "input bucket without slash": (
        {"allowedInputPrefixes": "gs://team-a-bucket/,gs://public-corpora"},
        "allowedInputPrefixes entries are gs:// prefixes ending in /",
    ),
    "image prefix": ({"allowedImagePrefixes": "ghcr.io/team"}, "allowedImagePrefixes entries end"),
}


def test_malformed_guardrails_are_refused(kubectl: Kubectl, platform: Platform) -> None:
    """A typo must not silently lift a limit: the params policy checks keys and values."""
    wrong = []
    for case, (data, message) in BAD_PARAMS.items():
        out = kubectl(
            "patch", "configmap", GUARDRAILS_CONFIGMAP, "-n", platform.team_a,
            "--dry-run=server", "--type=merge", "-p", json.dumps({"data": data}),
            check=False,
        )  # fmt: skip
        if out.returncode == 0 or message not in out.stderr:
            wrong.append(f"{case}: {out.stderr or 'accepted'}")
    assert not wrong, "\n".join(wrong)


def _binding(platform: Platform, **spec: Any) -> dict[str, Any]:
    binding = copy.deepcopy(platform.one("ValidatingAdmissionPolicyBinding", platform.policy))
    binding["spec"].update(spec)
    return binding


def test_deny_without_limits_and_warn_mode(kubectl: Kubectl, platform: Platform) -> None:
    """parameterNotFoundAction: Deny refuses namespaces without limits; Warn only warns."""
    original = platform.one("ValidatingAdmissionPolicyBinding", platform.policy)
    deny = _binding(
        platform,
        paramRef={**original["spec"]["paramRef"], "parameterNotFoundAction": "Deny"},
    )
    warn = _binding(platform, validationActions=["Warn"])
    try:
        apply_objects(kubectl, [deny])

        def open_refused() -> bool:
            out = dry_run(kubectl, platform.open, conforming_job())
            return out.returncode != 0 and "no params found" in out.stderr

        wait_for(open_refused, 30, "parameterNotFoundAction: Deny to take effect")
        assert dry_run(kubectl, platform.team_a, conforming_job()).returncode == 0

        apply_objects(kubectl, [warn])
        warned: list[str] = []

        def admitted_with_warning() -> bool:
            out = dry_run(kubectl, platform.team_a, _violating("max chips"))
            warned[:] = [out.stderr]
            return out.returncode == 0 and "Warning:" in out.stderr

        wait_for(admitted_with_warning, 30, "validationActions: [Warn] to take effect")
        assert "exceeds this namespace's maxChips 16" in warned[0]
    finally:
        apply_objects(kubectl, [original])

    def refused_again() -> bool:
        # The refusal itself, not any non-zero exit (an API server not answering is one).
        out = dry_run(kubectl, platform.team_a, _violating("max chips"))
        return out.returncode != 0 and "maxChips 16" in out.stderr

    wait_for(refused_again, 30, "the original binding to be back")
