"""Pure parts of the stack: the Kubernetes wrapper module and KWOK's configuration."""

from __future__ import annotations

import re
import subprocess
import types

import pytest

from bpj_devstack import gomod, kwok_config
from bpj_devstack.versions import GOMODS_DIR, KUBERNETES_VERSION

RELEASE_GOMOD = """\
module k8s.io/kubernetes

go 1.24.0

godebug default=go1.24

require (
\tk8s.io/api v0.0.0
\tgithub.com/spf13/cobra v1.9.1
)

replace (
\tk8s.io/api => ./staging/src/k8s.io/api
\tk8s.io/apimachinery => ./staging/src/k8s.io/apimachinery
\tk8s.io/client-go => ./staging/src/k8s.io/client-go
)
"""


def test_staging_modules_are_read_from_the_release_gomod() -> None:
    assert gomod.staging_modules(RELEASE_GOMOD) == [
        "k8s.io/api",
        "k8s.io/apimachinery",
        "k8s.io/client-go",
    ]


def test_staging_version_maps_major_one_to_zero() -> None:
    assert gomod.staging_version("v1.34.4") == "v0.34.4"
    with pytest.raises(ValueError, match="Kubernetes release"):
        gomod.staging_version("1.34")


def test_wrapper_refuses_a_gomod_without_staging_modules() -> None:
    with pytest.raises(ValueError, match="staging modules"):
        gomod.render_wrapper_gomod("v1.34.4", RELEASE_GOMOD)


def test_committed_wrapper_pins_every_staging_module_of_the_release() -> None:
    """The committed go.mod must replace exactly what the release replaces, at v0.x.y."""
    try:
        release = gomod.download_release_gomod(KUBERNETES_VERSION)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.fail(f"cannot read the release go.mod: {exc}")
    committed = (GOMODS_DIR / "kubernetes" / "go.mod").read_text()
    pinned = dict(re.findall(r"^\s*(k8s\.io/\S+) => \S+ (v0\.\d+\.\d+)\s*$", committed, re.M))
    expected = gomod.staging_modules(release)
    assert sorted(pinned) == expected
    assert set(pinned.values()) == {gomod.staging_version(KUBERNETES_VERSION)}
    assert f"k8s.io/kubernetes {KUBERNETES_VERSION}" in committed


def test_tpu_nodes_carry_gke_labels_capacity_and_taint() -> None:
    pool = kwok_config.NodePool(
        "p", nodes=2, accelerator="tpu-v6e-slice", topology="4x4", chips_per_node=4, spot=True
    )
    nodes = kwok_config.node_manifests((pool,))
    assert [n["metadata"]["name"] for n in nodes] == ["p-0", "p-1"]
    node = nodes[0]
    assert node["metadata"]["labels"][kwok_config.LABEL_SPOT] == "true"
    assert node["status"]["capacity"]["google.com/tpu"] == "4"
    assert node["spec"]["taints"] == [
        {"key": "google.com/tpu", "value": "present", "effect": "NoSchedule"}
    ]


def test_cpu_nodes_have_no_tpu_and_no_taint() -> None:
    (node,) = kwok_config.node_manifests((kwok_config.NodePool("cpu", nodes=1),))
    assert "google.com/tpu" not in node["status"]["capacity"]
    assert node["spec"]["taints"] == []


def test_pod_success_delay_is_configurable() -> None:
    stage = next(
        s for s in kwok_config.stages("1500ms") if s["metadata"]["name"] == "pod-succeeded"
    )
    assert stage["spec"]["delay"]["durationMilliseconds"] == 1500
    with pytest.raises(ValueError, match="duration"):
        kwok_config.stages("soon")


# --- Importing images into a node's containerd --------------------------------------------

NODE = types.SimpleNamespace(name="local-cpu-0")
"""What import_image reads of a node, besides what the fake ctr answers."""
LOST_SNAPSHOT = (
    'ctr: failed to prepare extraction snapshot "extract-1 sha256:aa": parent snapshot '
    "sha256:bb does not exist: not found"
)


def _fake_ctr(monkeypatch: pytest.MonkeyPatch, import_errors: list[str]) -> list[tuple[str, ...]]:
    """containerd.ctr answering ``images import`` with ``import_errors`` in turn, then success."""
    from bpj_devstack.nodes import containerd

    calls: list[tuple[str, ...]] = []
    held: dict[str, str] = {}

    def ctr(node: object, *args: str) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        if args[:2] == ("images", "import"):
            if import_errors:
                return subprocess.CompletedProcess(args, 1, "", import_errors.pop(0))
            held["localhost/x:dev"] = "sha256:new"
            return subprocess.CompletedProcess(args, 0, "", "")
        rows = "".join(f"{name} application/json {digest}\n" for name, digest in held.items())
        return subprocess.CompletedProcess(args, 0, "REF TYPE DIGEST\n" + rows, "")

    monkeypatch.setattr(containerd, "ctr", ctr)
    monkeypatch.setattr(
        containerd, "archive_manifest", lambda archive: ("localhost/x:dev", "sha256:new")
    )
    return calls


def test_an_import_that_lost_a_snapshot_to_containerds_gc_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from bpj_devstack.nodes import containerd

    calls = _fake_ctr(monkeypatch, [LOST_SNAPSHOT])
    assert containerd.import_image(NODE, Path("x.tar"))  # type: ignore[arg-type]
    assert [c[:2] for c in calls].count(("images", "import")) == 2


def test_an_import_that_keeps_losing_snapshots_or_fails_otherwise_raises(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from pathlib import Path

    from bpj_devstack.nodes import containerd

    calls = _fake_ctr(monkeypatch, [LOST_SNAPSHOT] * containerd.IMPORT_ATTEMPTS)
    with pytest.raises(RuntimeError, match="does not exist"):
        containerd.import_image(NODE, Path("x.tar"))  # type: ignore[arg-type]
    assert [c[:2] for c in calls].count(("images", "import")) == containerd.IMPORT_ATTEMPTS

    calls = _fake_ctr(monkeypatch, ["ctr: unexpected EOF"])
    with pytest.raises(RuntimeError, match="unexpected EOF"):
        containerd.import_image(NODE, Path("x.tar"))  # type: ignore[arg-type]
    assert [c[:2] for c in calls].count(("images", "import")) == 1
