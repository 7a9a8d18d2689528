"""Pinned versions of the local stack's components and where their binaries are cached.

Each component is built from a wrapper Go module in ``devstack/gomods/<name>``
whose go.mod/go.sum pin the exact dependency graph. The cache key includes the
version and a hash of the wrapper's go.sum, so changing either rebuilds.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.34.4"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
FAKE_GCS_SERVER_VERSION = "v1.56.1"
HELM_VERSION = "v3.22.0"
KUBECONFORM_VERSION = "v0.8.0"
COREDNS_VERSION = "v1.15.0"

GOMODS_DIR = Path(__file__).resolve().parent.parent / "gomods"


@dataclass(frozen=True)
class Component:
    """One wrapper Go module and the binaries it produces."""

    name: str
    """Directory name under devstack/gomods/ and the cache key prefix."""
    version: str
    """Upstream release the wrapper pins; reported in the cache directory name."""
    packages: dict[str, str]
    """Binary name -> Go main package path to build into it."""
    ldflags: tuple[str, ...] = ()
    """Extra -X flags, e.g. so kube-apiserver's /version reports the release."""

    @property
    def module_dir(self) -> Path:
        return GOMODS_DIR / self.name

    def cache_key(self) -> str:
        digest = hashlib.sha256((self.module_dir / "go.sum").read_bytes()).hexdigest()[:12]
        return f"{self.name}-{self.version}-{digest}"


def _kube_version_ldflags(version: str) -> tuple[str, ...]:
    major, minor = version.lstrip("v").split(".")[:2]
    flags: list[str] = []
    # hack/lib/version.sh in kubernetes sets both packages; /version reads component-base.
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={version}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
            f"-X {pkg}.buildDate=1970-01-01T00:00:00Z",
        ]
    return tuple(flags)


KUBERNETES = Component(
    name="kubernetes",
    version=KUBERNETES_VERSION,
    packages={
        "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
        "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
        "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
        "kubelet": "k8s.io/kubernetes/cmd/kubelet",
        "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
    },
    ldflags=_kube_version_ldflags(KUBERNETES_VERSION),
)
ETCD = Component(
    name="etcd",
    version=ETCD_VERSION,
    packages={"etcd": "go.etcd.io/etcd/server/v3"},
)
KWOK = Component(
    name="kwok",
    version=KWOK_VERSION,
    packages={"kwok": "sigs.k8s.io/kwok/cmd/kwok"},
)
FAKE_GCS_SERVER = Component(
    name="fakegcs",
    version=FAKE_GCS_SERVER_VERSION,
    packages={"fake-gcs-server": "github.com/fsouza/fake-gcs-server"},
)

HELM = Component(
    name="helm",
    version=HELM_VERSION,
    packages={"helm": "helm.sh/helm/v3/cmd/helm"},
    # As Helm's Makefile: `helm version`, and the default Kubernetes version of template/lint
    # from the client-go it is built with (v0.37 -> 1.37); unset, Helm assumes 1.20.
    ldflags=(
        f"-X helm.sh/helm/v3/internal/version.version={HELM_VERSION}",
        "-X helm.sh/helm/v3/internal/version.gitTreeState=clean",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1",
        "-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=37",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1",
        "-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=37",
    ),
)
KUBECONFORM = Component(
    name="kubeconform",
    version=KUBECONFORM_VERSION,
    packages={"kubeconform": "github.com/yannh/kubeconform/cmd/kubeconform"},
    ldflags=(f"-X main.version={KUBECONFORM_VERSION}",),
)

#: Cluster DNS for pods on the real kubelets: Service names and the per-pod names of a
#: headless Service, which the hosts of a multi-host slice use to find each other.
COREDNS = Component(
    name="coredns",
    version=COREDNS_VERSION,
    packages={"coredns": "github.com/coredns/coredns"},
)

ALL_COMPONENTS = (ETCD, KUBERNETES, KWOK, FAKE_GCS_SERVER, HELM, KUBECONFORM, COREDNS)


def cache_root() -> Path:
    """Where built binaries live: outside the repository so clean clones reuse them."""
    explicit = os.environ.get("BPJ_DEVSTACK_CACHE")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "bert-pretrain-operator" / "devstack"
