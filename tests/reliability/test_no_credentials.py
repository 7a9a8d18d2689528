"""No credentials in specs, status or logs (issue 9).

The end-to-end check scans what one full ``./dev demo`` run (the ``demo_run``
fixture, shared with ``tests/test_demo.py``: prepare, train and export pods
really run, the trainer reports progress with its service-account token, the
operator runs from its image, installed by the chart) leaves behind:

- specs: the live objects saved before the stack stopped (``objects.json``: the
  BertPretrainJob, its Jobs, Pods, ConfigMaps and Services, the events) and the
  children ``bpj render`` renders offline for every example that needs no GCS;
- status: the BertPretrainJob's ``status`` (in ``objects.json``) and the status
  the demo printed;
- logs: every pod's log as ``kubectl logs`` serves it (the operator's and each
  trainer pod's), the GCS proxy's (which sees the fake GCS token) and the API
  server's audit log (which sees every service account's requests).

for the run's own secrets by value (its private keys, each pod's token, the fake
GCS access token) and for any secret by shape (``credentials.PATTERNS``). The
tests above it plant each kind of secret and check the scanner finds it.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from bpj_devstack import pki
from bpj_devstack.gcs_proxy import FAKE_ACCESS_TOKEN
from tests.reliability.credentials import PATTERNS, Finding, scan, stack_secrets
from tests.support import DEMO_TEST_TIMEOUT, DemoRun

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = REPO_ROOT / "examples"


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")


#: Shaped like a kube-apiserver service-account token (RS256 JWT), signature random.
POD_TOKEN = ".".join(
    (
        _b64({"alg": "RS256", "kid": "k1"}),
        _b64({"iss": "https://kubernetes.default.svc", "sub": "system:serviceaccount:t:bert"}),
        base64.urlsafe_b64encode(bytes(range(256))).decode().rstrip("="),
    )
)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory as the demo leaves it: real keys, a pod's token saved by the demo."""
    directory = tmp_path_factory.mktemp("stack-run")
    pki.create(directory / "pki")
    token = directory / "tokens" / "t-1" / "bert-train-0.token"
    token.parent.mkdir(parents=True)
    token.write_text(POD_TOKEN)
    return directory


def found(findings: list[Finding]) -> set[str]:
    return {f.what for f in findings}


def test_the_secret_inventory_holds_every_key_and_token(run_dir: Path) -> None:
    names = {s.name for s in stack_secrets(run_dir, FAKE_ACCESS_TOKEN)}
    assert names == {
        "private key pki/admin.key",
        "private key pki/apiserver.key",
        "private key pki/ca.key",
        "private key pki/sa.key",
        "service-account token of pod t-1/bert-train-0",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING value",
    }


def test_planted_secrets_are_found_by_value_and_by_shape(run_dir: Path) -> None:
    secrets = stack_secrets(run_dir, FAKE_ACCESS_TOKEN)
    ca_key = (run_dir / "pki" / "ca.key").read_text()
    sa_key = (run_dir / "pki" / "sa.key").read_text()
    sa_body = "".join(line for line in sa_key.splitlines() if "-----" not in line)
    signature = POD_TOKEN.rsplit(".", 1)[1]
    pod = "service-account token of pod t-1/bert-train-0"
    planted = {
        # A log line with the token in it, and one that names the header.
        "operator.log": f"patching status as {POD_TOKEN}",
        "trainer.log": json.dumps({"headers": {"Authorization": f"Bearer {POD_TOKEN}"}}),
        "signature.log": f"token signature {signature}",
        # A key pasted into a spec, JSON-escaped into a status, base64'd into a ConfigMap.
        "job.yaml": yaml.safe_dump({"env": [{"name": "KEY", "value": ca_key}]}),
        "status.json": json.dumps({"message": sa_body}),
        "configmap.yaml": f"client-key-data: {base64.b64encode(ca_key.encode()).decode()}",
        "proxy.log": f"GOOGLE_AUTH_TOKEN_FOR_TESTING={FAKE_ACCESS_TOKEN}",
        # Secrets this run never made: found by shape only.
        "other-key.pem": "-----BEGIN PRIVATE KEY-----\nMIIEvQ...\n-----END PRIVATE KEY-----",
        "curl.log": "> Authorization: Bearer ya29.a0AfH6SMBx-not-a-real-token",
        "other-jwt.log": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJvdGhlciJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ",
    }
    expected = {
        "operator.log": {pod, "JSON Web Token"},
        "trainer.log": {pod, "JSON Web Token", "Authorization: Bearer header", "bearer token"},
        "signature.log": {pod},
        "job.yaml": {"private key pki/ca.key", "PEM private key block"},
        "status.json": {"private key pki/sa.key"},
        "configmap.yaml": {"private key pki/ca.key"},
        "proxy.log": {"GOOGLE_AUTH_TOKEN_FOR_TESTING value"},
        "other-key.pem": {"PEM private key block"},
        "curl.log": {"Authorization: Bearer header", "bearer token"},
        "other-jwt.log": {"JSON Web Token"},
    }
    for source, text in planted.items():
        findings = scan({source: text}, secrets)
        assert found(findings) == expected[source], source
        assert all(str(f).startswith(f"{source}:") for f in findings)
    # A finding names the secret, never shows it.
    report = "\n".join(str(f) for f in scan(planted, secrets))
    assert POD_TOKEN not in report and signature not in report
    assert FAKE_ACCESS_TOKEN not in report and sa_body[:40] not in report


def test_ordinary_text_about_credentials_is_not_a_finding(run_dir: Path) -> None:
    secrets = stack_secrets(run_dir, FAKE_ACCESS_TOKEN)
    ca_cert = (run_dir / "pki" / "ca.crt").read_text()
    projected = {"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}
    clean = {
        "ca.crt": ca_cert,  # a certificate is public
        "kube-root-ca.json": json.dumps({"data": {"ca.crt": ca_cert}}),
        "pod.yaml": yaml.safe_dump(
            {
                "serviceAccountName": "bert-trainer",
                "volumes": [{"name": "kube-api-access", "projected": {"sources": [projected]}}],
                "env": [{"name": "GOOGLE_CLOUD_PROJECT", "value": "bpj-devstack"}],
            }
        ),
        "docs.md": "Bearer tokens are never logged; GOOGLE_AUTH_TOKEN_FOR_TESTING is unset.",
        "trainer.log": '{"message": "tokenizer: 1000 tokens, authorization granted"}',
    }
    assert scan(clean, secrets) == []
    assert set(PATTERNS) == {
        "PEM private key block",
        "Authorization: Bearer header",
        "bearer token",
        "JSON Web Token",
    }


def _render(example: Path) -> str | None:
    """``bpj render`` of an example; None when it needs GCS (a checkpoint's config to read)."""
    if any(field in example.read_text() for field in ("initCheckpoint", "initFromOutput")):
        return None
    result = subprocess.run(
        [sys.executable, "-m", "bert_pretrain_operator.cli", "render", str(example)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@pytest.mark.timeout(DEMO_TEST_TIMEOUT)
@pytest.mark.slow
@pytest.mark.cluster
@pytest.mark.tensorflow
def test_a_demo_run_leaves_no_credentials_in_specs_status_or_logs(demo_run: DemoRun) -> None:
    assert demo_run.returncode == 0, f"demo failed:\n{demo_run.stdout}\n{demo_run.stderr[-4000:]}"
    run = demo_run.run_dir
    secrets = stack_secrets(run, FAKE_ACCESS_TOKEN)

    # The inventory is the real one: the stack's keys and a token for each pod that ran
    # (prepare, train, export, and the operator's own), and the scanner finds each where
    # it is kept.
    token_files = sorted(run.glob("tokens/*/*.token"))
    keys = sorted(run.glob("pki/*.key"))
    tokens = [s for s in secrets if s.name.startswith("service-account token")]
    assert len(keys) >= 5
    assert len(tokens) == len(token_files) >= 4
    where_kept = {str(p): p.read_text() for p in [*token_files, *keys]}
    assert found(scan(where_kept, secrets)) >= {s.name for s in secrets} - {
        "GOOGLE_AUTH_TOKEN_FOR_TESTING value"
    }

    texts: dict[str, str] = {}
    objects = json.loads((run / "objects.json").read_text())
    kinds = {item["kind"] for item in objects["items"]}
    assert {"BertPretrainJob", "Job", "Pod", "ConfigMap", "Event"} <= kinds, kinds
    [job] = [item for item in objects["items"] if item["kind"] == "BertPretrainJob"]
    assert job["status"]["phase"] == "Succeeded"
    assert job["status"]["progress"]["step"] == 20  # reported with the pod's token
    texts["objects.json"] = json.dumps(objects, indent=1)  # a field a line
    rendered = 0
    for example in sorted(EXAMPLES.glob("*.yaml")):
        output = _render(example)
        if output is not None:
            texts[f"bpj render {example.name}"] = output
            rendered += 1
    assert rendered >= 3
    logs = [run / "logs" / name for name in ("gcs-proxy.log", "audit.log", "kube-apiserver.log")]
    logs += sorted(run.glob("pods/*/*.log"))
    for path in logs:
        texts[str(path.relative_to(run))] = path.read_text(errors="replace")
    texts["demo stdout"] = demo_run.stdout
    texts["demo stderr"] = demo_run.stderr
    trainer_logs = [t for source, t in texts.items() if source.startswith("pods/bpj-demo/")]
    assert len(trainer_logs) >= 3 and any('"train finished"' in t for t in trainer_logs)
    operator_logs = [t for source, t in texts.items() if source.startswith("pods/bpj-system/")]
    assert operator_logs and all(t.strip() for t in operator_logs)

    findings = scan(texts, secrets)
    assert not findings, "secret material found:\n" + "\n".join(str(f) for f in findings)
    print(
        f"\nscanned {len(texts)} sources, {sum(len(t) for t in texts.values())} bytes, "
        f"for {len(secrets)} secrets and {len(PATTERNS)} patterns: nothing found"
    )
