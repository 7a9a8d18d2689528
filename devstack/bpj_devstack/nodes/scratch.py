"""Images ``FROM scratch`` made of one static binary: the pod sandbox and a test toolbox.

Nothing can be pulled here. Kubernetes' own pause container is one C file in the
``k8s.io/kubernetes`` module (``build/pause/linux/pause.c``); its Makefile links it
statically into a ``FROM scratch`` image that runs as 65535, and this does the
same with gcc and buildah. Debian's static busybox makes the toolbox image that
the stack's own tests run in pods (``id``, ``nslookup``, ``wget``). Archives are
cached by the binary's hash.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from bpj_devstack.versions import KUBERNETES_VERSION, cache_root

PAUSE_VERSION = "3.10.1"
PAUSE_IMAGE = f"localhost/bpj-devstack/pause:{PAUSE_VERSION}"
BUSYBOX_IMAGE = "localhost/bpj-devstack/busybox:static"
_BUSYBOX = Path("/bin/busybox")


def _pause_source() -> Path:
    modcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    source = Path(modcache) / f"k8s.io/kubernetes@{KUBERNETES_VERSION}/build/pause/linux/pause.c"
    if not source.exists():
        # The module is in the cache once the control plane was built from it.
        subprocess.run(
            ["go", "mod", "download", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], check=True
        )
    return source


def pause_archive() -> Path:
    """The pause image as an OCI archive (built on first use)."""
    source = _pause_source()
    if shutil.which("gcc") is None:
        raise RuntimeError("building the pause image needs gcc (run `./dev setup`)")
    key = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = cache_root() / f"pause-{PAUSE_VERSION}-{key}" / "image.oci.tar"
    if target.exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        binary = Path(tmp) / "pause"
        subprocess.run(
            [
                *("gcc", "-Os", "-Wall", "-Werror", "-static", f"-DVERSION=v{PAUSE_VERSION}-bpj"),
                *("-o", str(binary), str(source)),
            ],
            check=True,
        )
        subprocess.run(["strip", str(binary)], check=True)
        _build(PAUSE_IMAGE, {binary: "/pause"}, ["/pause"], "65535:65535", target)
    return target


def busybox_archive() -> Path:
    """Debian's static busybox as an image whose commands are ``/bin/<applet>``."""
    if not _BUSYBOX.exists():
        raise RuntimeError("the toolbox image needs Debian's busybox-static (run `./dev setup`)")
    key = hashlib.sha256(_BUSYBOX.read_bytes()).hexdigest()[:12]
    target = cache_root() / f"busybox-{key}" / "image.oci.tar"
    if not target.exists():
        _build(BUSYBOX_IMAGE, {_BUSYBOX: "/bin/busybox"}, ["/bin/sh"], "65534:65534", target)
    return target


def _build(
    image: str, files: dict[Path, str], entrypoint: list[str], user: str, target: Path
) -> None:
    if shutil.which("buildah") is None:
        raise RuntimeError(f"building {image} needs buildah (run `./dev setup`)")
    container = _out("buildah", "from", "scratch")
    try:
        for source, dest in files.items():
            _out("buildah", "copy", container, str(source), dest)
        if image == BUSYBOX_IMAGE:
            # Applets as /bin/<name>; symlinks so the image needs no shell to install them.
            _out("buildah", "run", container, "/bin/busybox", "--install", "-s", "/bin")
        _out("buildah", "config", "--entrypoint", json.dumps(entrypoint), "--user", user, container)
        _out("buildah", "commit", "--quiet", container, image)
    finally:
        subprocess.run(["buildah", "rm", container], check=False, capture_output=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(target.name + ".tmp")
    staging.unlink(missing_ok=True)
    _out("buildah", "push", "--quiet", image, f"oci-archive:{staging}:{image}")
    staging.rename(target)


def _out(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {result.stderr.strip()}")
    return result.stdout.strip()
