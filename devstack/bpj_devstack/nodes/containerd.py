"""One containerd per real node, and the images it runs.

Each kubelet needs a runtime of its own: a kubelet kills the sandboxes of pods it
does not know, so two kubelets on one containerd would kill each other's pods.
containerd's settings that differ from Debian's defaults are the ones this VM
needs (``restrict_oom_score_adj``: root here lacks CAP_SYS_RESOURCE, and runc
otherwise fails with "can't get final child's PID from pipe"; cgroupfs, not
systemd), the local pause image (nothing can be pulled), and per-node paths:
state, sockets and pod network namespaces under the node's run directory, the CNI
configuration of the node, the image store in the cache.
"""

from __future__ import annotations

import json
import logging
import subprocess
import tarfile
from pathlib import Path

from bpj_devstack.nodes import layout

log = logging.getLogger(__name__)

CNI_BIN_DIR = "/usr/lib/cni"


def config_toml(node: layout.KubeletNode, sandbox_image: str) -> str:
    """containerd's config (version 2): only the keys that differ from its defaults."""
    run = node.run_dir
    return f"""\
version = 2
root = "{node.containerd_root}"
state = "{run / "containerd"}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{node.containerd_socket}"

[debug]
  level = "info"

[plugins."io.containerd.internal.v1.opt"]
  path = "{node.var_dir / "opt"}"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{sandbox_image}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_unprivileged_ports = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{run / "runc"}"

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{node.var_dir / "cni" / "net.d"}"
    max_conf_num = 1
"""


def cni_conflist(node: layout.KubeletNode) -> dict[str, object]:
    """bridge (host-local IPAM on the node's /24), portmap, loopback: as kind's nodes chain them."""
    return {
        "cniVersion": "0.4.0",
        "name": f"bpj-{node.name}",
        "plugins": [
            {
                "type": "bridge",
                "bridge": node.bridge,
                "isGateway": True,
                # Cross-node pod traffic is routed on this host; only traffic leaving the
                # pod range (to the API server, GCS emulator, DNS on the host) is masqueraded.
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": node.pod_cidr, "gateway": node.gateway}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(node.var_dir / "cni" / "ipam"),
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def write_config(node: layout.KubeletNode, sandbox_image: str) -> Path:
    node.run_dir.mkdir(parents=True, exist_ok=True)
    node.containerd_root.mkdir(parents=True, exist_ok=True)
    net_d = node.var_dir / "cni" / "net.d"
    net_d.mkdir(parents=True, exist_ok=True)
    (net_d / "10-bpj.conflist").write_text(json.dumps(cni_conflist(node), indent=2))
    path = node.run_dir / "containerd.toml"
    path.write_text(config_toml(node, sandbox_image))
    return path


def argv(config: Path) -> list[str]:
    return ["containerd", "--config", str(config)]


def ctr(node: layout.KubeletNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ctr", "--address", str(node.containerd_socket), "--namespace", "k8s.io", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def is_serving(node: layout.KubeletNode) -> bool:
    return node.containerd_socket.exists() and ctr(node, "version").returncode == 0


def archive_manifest(archive: Path) -> tuple[str, str]:
    """(image name, manifest digest) of a single-image OCI archive, read from its index."""
    with tarfile.open(archive) as tar:
        member = tar.extractfile("index.json")
        assert member is not None, f"{archive} has no index.json"
        index = json.load(member)
    manifest = index["manifests"][0]
    annotations = manifest.get("annotations", {})
    name = annotations.get("io.containerd.image.name") or annotations.get(
        "org.opencontainers.image.ref.name", ""
    )
    return name, manifest["digest"]


def images(node: layout.KubeletNode) -> dict[str, str]:
    """Image name -> manifest digest, as this node's containerd holds them."""
    out = ctr(node, "images", "ls")
    found: dict[str, str] = {}
    for line in out.stdout.splitlines()[1:]:
        fields = line.split()
        if len(fields) >= 3:
            found[fields[0]] = fields[2]
    return found


IMPORT_ATTEMPTS = 3


def import_image(node: layout.KubeletNode, archive: Path) -> bool:
    """Import ``archive`` unless the node already holds that exact manifest under its name.

    Returns whether it imported. The image store outlives ``down``, so a warm
    ``up`` imports only images that changed.
    """
    name, digest = archive_manifest(archive)
    if not name:
        raise RuntimeError(f"{archive} names no image (org.opencontainers.image.ref.name)")
    if images(node).get(name) == digest:
        return False
    log.info("importing %s into %s's containerd", name, node.name)
    for attempt in range(1, IMPORT_ATTEMPTS + 1):
        result = ctr(node, "images", "import", str(archive))
        if result.returncode == 0:
            break
        # Re-importing a name whose old image shares base layers with the new one
        # races containerd's garbage collector: it may remove a parent snapshot that
        # the unpack is about to stack onto ("parent snapshot ... does not exist",
        # containerd/containerd#3787; it failed a CI run's demo on 7 December 2026).
        # A second import unpacks the missing layers again.
        transient = "does not exist: not found" in result.stderr
        if not transient or attempt == IMPORT_ATTEMPTS:
            raise RuntimeError(
                f"ctr images import {archive} into {node.name}: {result.stderr.strip()}"
            )
        log.warning(
            "import of %s into %s lost a snapshot to containerd's GC; importing again",
            name,
            node.name,
        )
    if images(node).get(name) != digest:
        raise RuntimeError(f"{node.name}'s containerd has no {name}@{digest} after the import")
    return True
