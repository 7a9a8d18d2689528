"""docs/argocd-health.lua, Argo CD's health check for BertPretrainJob, run by a real Lua.

Argo CD runs health checks in gopher-lua, a Lua 5.1; lupa bundles the reference
interpreters, so the script runs here under Lua 5.1 (Argo CD's dialect) and 5.4 (to
catch reliance on anything either version lacks), with the object as the global `obj`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "argocd-health.lua"
ARGOCD_DOC = SCRIPT.with_name("argocd.md")
CONFIG_KEY = "resource.customizations.health.pretraining.bert.dev_BertPretrainJob"


@pytest.fixture(params=["lua51", "lua54"])
def health(request: pytest.FixtureRequest) -> Any:
    """health(obj) -> {"status": ..., "message": ...} as Argo CD would compute it."""
    lupa = importlib.import_module(f"lupa.{request.param}")
    script = SCRIPT.read_text()

    def run(obj: dict[str, Any]) -> dict[str, Any]:
        lua = lupa.LuaRuntime(unpack_returned_tuples=True)
        lua.globals().obj = lua.table_from(obj, recursive=True)
        result = lua.execute(script)
        return dict(result.items())

    return run


def job(status: dict[str, Any] | None = None, generation: int = 1) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "pretraining.bert.dev/v1alpha1",
        "kind": "BertPretrainJob",
        "metadata": {"name": "quickstart", "namespace": "ml", "generation": generation},
        "spec": {"output": "gs://bucket/runs/quickstart"},
    }
    if status is not None:
        obj["status"] = status
    return obj


def cond(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def test_a_job_without_status_is_progressing(health: Any) -> None:
    assert health(job())["status"] == "Progressing"
    assert health(job({}))["status"] == "Progressing"


def test_pending_is_progressing_and_says_why_it_waits(health: Any) -> None:
    assert health(job({"phase": "Pending", "observedGeneration": 1})) == {
        "status": "Progressing",
        "message": "Pending",
    }
    waiting = job(
        {
            "phase": "Pending",
            "observedGeneration": 1,
            "conditions": [cond("Admitted", "False", "WaitingForAdmission", "queue team-a")],
        }
    )
    assert health(waiting) == {
        "status": "Progressing",
        "message": "Pending: WaitingForAdmission: queue team-a",
    }


@pytest.mark.parametrize("phase", ["Preparing", "Training", "Exporting"])
def test_running_stages_are_progressing(health: Any, phase: str) -> None:
    assert health(job({"phase": phase, "observedGeneration": 1})) == {
        "status": "Progressing",
        "message": phase,
    }


def test_training_reports_step_and_loss(health: Any) -> None:
    status = {
        "phase": "Training",
        "observedGeneration": 1,
        "progress": {"step": 120, "totalSteps": 1000, "loss": 3.41234, "mlmAccuracy": 0.4},
    }
    assert health(job(status)) == {
        "status": "Progressing",
        "message": "Training: step 120/1000, loss 3.412",
    }
    status["progress"] = {"step": 7}
    assert health(job(status))["message"] == "Training: step 7"


def test_unschedulable_training_says_so(health: Any) -> None:
    status = {
        "phase": "Training",
        "observedGeneration": 1,
        "conditions": [cond("Trained", "False", "Unschedulable", "no tpu-v5p 2x2x2 node pool")],
    }
    assert health(job(status))["message"] == ("Training: Unschedulable: no tpu-v5p 2x2x2 node pool")


def test_succeeded_is_healthy(health: Any) -> None:
    status = {
        "phase": "Succeeded",
        "observedGeneration": 1,
        "conditions": [cond("Succeeded", "True", "Succeeded")],
        "progress": {"step": 20, "totalSteps": 20, "loss": 6.25},
    }
    assert health(job(status)) == {
        "status": "Healthy",
        "message": "Succeeded: step 20/20, loss 6.25",
    }


def test_failed_is_degraded_with_the_failed_conditions_message(health: Any) -> None:
    status = {
        "phase": "Failed",
        "observedGeneration": 1,
        "conditions": [
            cond("Trained", "False", "BadInput", "part-00000: not a TFRecord file"),
            cond("Failed", "True", "BadInput", "part-00000: not a TFRecord file"),
        ],
    }
    assert health(job(status)) == {
        "status": "Degraded",
        "message": "BadInput: part-00000: not a TFRecord file",
    }
    bare = {"phase": "Failed", "conditions": [cond("Failed", "True", "DeadlineExceeded")]}
    assert health(job(bare)) == {"status": "Degraded", "message": "DeadlineExceeded"}
    assert health(job({"phase": "Failed"})) == {"status": "Degraded", "message": "Failed"}


def test_suspended_is_suspended(health: Any) -> None:
    status = {
        "phase": "Suspended",
        "observedGeneration": 2,
        "conditions": [cond("Suspended", "True", "Suspended", "training attempt 1 deleted")],
    }
    assert health(job(status, generation=2)) == {
        "status": "Suspended",
        "message": "training attempt 1 deleted",
    }
    plain = job({"phase": "Suspended", "observedGeneration": 2}, generation=2)
    assert health(plain)["status"] == "Suspended"


def test_a_spec_edit_not_yet_observed_is_progressing(health: Any) -> None:
    # Resuming: spec.runPolicy.suspend cleared (generation 3), the operator not there yet.
    resuming = job({"phase": "Suspended", "observedGeneration": 2}, generation=3)
    assert health(resuming) == {
        "status": "Progressing",
        "message": "Waiting for the operator to act on generation 3",
    }
    # A finished job stays finished, whatever is edited afterwards.
    done = job({"phase": "Succeeded", "observedGeneration": 1}, generation=2)
    assert health(done)["status"] == "Healthy"


def test_an_unknown_phase_is_unknown(health: Any) -> None:
    assert health(job({"phase": "Exploding", "observedGeneration": 1})) == {
        "status": "Unknown",
        "message": "Unknown phase Exploding",
    }


def test_the_documented_config_embeds_the_script_verbatim() -> None:
    """docs/argocd.md's argocd-cm snippet is the tested script, not a drifting copy."""
    import yaml

    doc = ARGOCD_DOC.read_text()
    block = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    config = yaml.safe_load(block)
    assert config["kind"] == "ConfigMap" and config["metadata"]["name"] == "argocd-cm"
    assert config["data"][CONFIG_KEY] == SCRIPT.read_text()
