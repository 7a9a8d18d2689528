"""The ``bpj`` command: validate, crd, render."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from bert_pretrain_operator import cli
from bert_pretrain_operator.api.crd import crd_yaml
from tests.api.invalid_cases import BASES, CASES

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


def _write(tmp_path: Path, name: str, *documents: Any) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return str(path)


def test_validate_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["validate", *map(str, EXAMPLES)]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert out.count(": valid") == len(EXAMPLES)


def test_validate_reports_every_invalid_document_by_field(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cases = CASES[:3]
    path = _write(tmp_path, "jobs.yaml", BASES["corpus"], *(c.manifest() for c in cases))
    assert cli.main(["validate", path]) == cli.EXIT_INVALID
    out = capsys.readouterr().out
    assert f"{path}#1: case: valid" in out
    for index, case in enumerate(cases, start=2):
        assert f"{path}#{index}: case: invalid" in out
        assert f"  {case.field}" in out


def test_validate_reads_stdin(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case = next(c for c in CASES if c.id == "warmup-exceeds-train-steps")
    monkeypatch.setattr(sys, "stdin", io.StringIO(yaml.safe_dump(case.manifest())))
    assert cli.main(["validate", "-"]) == cli.EXIT_INVALID
    assert f"<stdin>: case: invalid\n  {case.field}:" in capsys.readouterr().out


def test_validate_skips_other_kinds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    path = _write(tmp_path, "mixed.yaml", config_map, BASES["records"])
    assert cli.main(["validate", path]) == cli.EXIT_OK
    assert f"{path}#1: skipped (v1 ConfigMap)" in capsys.readouterr().out


def test_validate_reports_a_wrong_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = dict(BASES["records"], apiVersion="pretraining.bert.dev/v2")
    assert cli.main(["validate", _write(tmp_path, "v2.yaml", doc)]) == cli.EXIT_INVALID
    assert "apiVersion: must be pretraining.bert.dev/v1alpha1" in capsys.readouterr().out


def test_validate_unreadable_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("spec: [unclosed\n")
    assert cli.main(["validate", str(tmp_path / "missing.yaml"), str(broken)]) == 1
    err = capsys.readouterr().err
    assert "missing.yaml" in err
    assert "broken.yaml" in err


def test_crd_prints_the_generated_crd(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["crd"]) == cli.EXIT_OK
    assert capsys.readouterr().out == crd_yaml()


def test_render_prints_the_children_the_operator_creates(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["render", _write(tmp_path, "job.yaml", BASES["corpus"])]) == cli.EXIT_OK
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [o["kind"] for o in objects]
    assert kinds[0] == "ConfigMap"
    stages = [
        o["metadata"]["labels"].get("pretraining.bert.dev/stage")
        for o in objects
        if o["kind"] == "Job"
    ]
    assert stages[:2] == ["check", "prepare"] and "train" in stages
    check = next(o for o in objects if o["kind"] == "Job")
    pod = check["spec"]["template"]["spec"]
    assert pod["containers"][0]["args"][0] == "check"
    assert (
        pod["serviceAccountName"]
        == next(o for o in objects if o["kind"] == "Job" and o is not check)["spec"]["template"][
            "spec"
        ]["serviceAccountName"]
    ), "the check reads as the stages do"
    train = next(
        o
        for o in objects
        if o["kind"] == "Job" and o["metadata"]["labels"]["pretraining.bert.dev/stage"] == "train"
    )
    assert train["spec"]["completionMode"] == "Indexed"


def test_render_refuses_an_invalid_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "bad.yaml", CASES[0].manifest())
    assert cli.main(["render", path]) == cli.EXIT_INVALID
    assert CASES[0].field in capsys.readouterr().err


def test_render_without_gcs_credentials_says_what_it_could_not_read(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An init checkpoint is sized from GCS; without credentials: a message, not a traceback."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_APPLICATION_CREDENTIALS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path))  # no gcloud credentials either
    monkeypatch.setenv("NO_GCE_CHECK", "true")  # nor a metadata server
    example = next(p for p in EXAMPLES if p.name == "continued-pretraining-multilingual.yaml")
    assert cli.main(["render", str(example)]) == cli.EXIT_UNAVAILABLE
    err = capsys.readouterr().err
    assert "cannot read spec.model.initCheckpoint's bert_config.json" in err
    assert "Traceback" not in err


def test_render_needs_exactly_one_job(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tmp_path, "two.yaml", BASES["corpus"], BASES["records"])
    assert cli.main(["render", path]) == cli.EXIT_INVALID
    assert "expected one BertPretrainJob, found 2" in capsys.readouterr().err


def test_console_entry_point_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bert_pretrain_operator.cli", "validate", str(EXAMPLES[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert ": valid" in result.stdout
