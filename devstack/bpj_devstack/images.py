"""The product's images, built daemonless with buildah and cached by content.

Base images cannot be pulled here, so the Python base is made from Debian packages
(``debootstrap --variant=minbase`` of bookworm with python3, venv and the CA
certificates, plus a ``python`` command) and passed to both Dockerfiles as
``PYTHON_IMAGE``; the published default stays the pinned python slim image.

Caching, from the slowest step down:

- the base is keyed by its recipe (suite, variant, packages, mirror, the steps
  after debootstrap): its root filesystem tarball lives in ``cache_dir()`` and the
  image in containers-storage as ``localhost/bpj-devstack/python-base:<key>``;
- ``buildah bud --layers`` caches every step; the Dockerfiles install the
  dependencies in a layer keyed by the lock file alone, then copy only the product's
  files onto it, so a code change rebuilds seconds, not 3 GB;
- OCI archives for containerd (``export_oci_archive``) are keyed by image ID.

The host's package access goes into the build as read-only mounts, never a layer:
its CA bundle (this machine reaches PyPI through a TLS proxy whose CA only the host
trusts) and a pip configuration merged from the host's pip.conf files and PIP_*
variables.

The lock files the images install from are generated here too (``compile_locks``,
``bpj-devstack images lock``), with uv, for Linux x86_64 and Python 3.11. The TPU
variant's packages are proven by installing its lock into a virtual environment
cached by the lock's hash (``tpu_venv``), not by building a second image.
"""

from __future__ import annotations

import argparse
import configparser
import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bpj_devstack.versions import cache_root

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]

#: The limits podman/buildah may set in a container here: a VM with cgroup v1 where
#: root lacks CAP_SYS_RESOURCE refuses rlimits above the host's hard limits.
ULIMITS: tuple[str, ...] = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024")

#: The uid:gid both Dockerfiles declare, and the chart's and operator's pods run as.
IMAGE_USER = "10001:10001"

#: Lock generation: the platform the images run on.
LOCK_PYTHON_VERSION = "3.11"
LOCK_PYTHON_PLATFORM = "x86_64-manylinux_2_36"
"""Debian 12's glibc (2.36), the base of both the Debian-made and the python slim image."""


def cache_dir() -> Path:
    """Images' cache: next to the stack's binaries (``BPJ_DEVSTACK_CACHE`` moves both)."""
    return cache_root() / "images"


# --- The Python base ----------------------------------------------------------------


@dataclass(frozen=True)
class BaseRecipe:
    """How the Debian-made Python base is made; every field is part of its cache key."""

    suite: str = "bookworm"
    variant: str = "minbase"
    packages: tuple[str, ...] = ("python3", "python3-venv", "ca-certificates")
    mirror: str = "http://deb.debian.org/debian"
    steps: tuple[str, ...] = (
        # Debian has only python3; the Dockerfiles (and the slim image) run `python`.
        "ln -s python3 usr/bin/python",
        # Package indexes and downloaded .debs are not part of a runtime image.
        "rm -rf var/lib/apt/lists/* var/cache/apt/*.bin var/cache/apt/archives/*.deb",
    )
    """Shell commands run in the root filesystem's directory after debootstrap."""
    repository: str = "localhost/bpj-devstack/python-base"

    def key(self) -> str:
        recipe = {k: v for k, v in asdict(self).items() if k != "repository"}
        return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]

    @property
    def ref(self) -> str:
        return f"{self.repository}:{self.suite}-{self.key()}"

    @property
    def tarball(self) -> Path:
        return cache_dir() / f"python-base-{self.suite}-{self.key()}.tar"


def image_id(ref: str) -> str | None:
    """The image ID of ``ref`` in containers-storage, or None when it is not there."""
    result = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True,
        text=True,
        check=False,
    )
    return result.stdout.strip() or None if result.returncode == 0 else None


def image_size(ref: str) -> int:
    """Bytes of the image's layers, uncompressed (what `podman images` shows)."""
    out = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", ref],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.strip())


def build_base(recipe: BaseRecipe = BaseRecipe()) -> str:
    """The base image's reference, made (debootstrap, import) only when not cached."""
    if image_id(recipe.ref):
        return recipe.ref
    if not recipe.tarball.exists():
        _debootstrap(recipe)
    log.info("importing %s as %s", recipe.tarball, recipe.ref)
    subprocess.run(
        [
            "podman",
            "import",
            "--change",
            'CMD ["python3"]',
            "--change",
            "ENV LANG=C.UTF-8",
            str(recipe.tarball),
            recipe.ref,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return recipe.ref


def _debootstrap(recipe: BaseRecipe) -> None:
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is needed to make the Python base (apt-get install it)")
    cache_dir().mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(dir=cache_dir(), prefix="rootfs.") as work:
        rootfs = Path(work) / "rootfs"
        try:
            _make_rootfs(recipe, rootfs)
        finally:
            # debootstrap mounts /proc and /sys in the target while it works; a failed
            # run leaves them there, and removing the directory must not walk into them.
            _unmount_under(rootfs)
    log.info("made the Python base in %.0fs", time.monotonic() - started)


def _make_rootfs(recipe: BaseRecipe, rootfs: Path) -> None:
    log.info("debootstrap %s (%s) with %s", recipe.suite, recipe.variant, recipe.packages)
    subprocess.run(
        [
            "debootstrap",
            f"--variant={recipe.variant}",
            f"--include={','.join(recipe.packages)}",
            recipe.suite,
            str(rootfs),
            recipe.mirror,
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for step in recipe.steps:
        subprocess.run(["sh", "-ec", step], cwd=rootfs, check=True)
    # What went in, for whoever wonders later (the key is the recipe, not this list).
    packages = subprocess.run(
        ["chroot", str(rootfs), "dpkg-query", "-W", "-f", "${Package}=${Version}\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    recipe.tarball.with_suffix(".packages").write_text(packages)
    staging = recipe.tarball.with_suffix(f".tmp{os.getpid()}")
    subprocess.run(
        [
            "tar",
            "--numeric-owner",
            "--xattrs",
            "--one-file-system",
            "-C",
            str(rootfs),
            "-cf",
            str(staging),
            ".",
        ],
        check=True,
    )
    staging.rename(recipe.tarball)


def _unmount_under(root: Path) -> None:
    prefix = str(root.resolve()) + "/"
    with open("/proc/self/mounts") as f:
        points = [line.split()[1] for line in f]
    for point in sorted((p for p in points if p.startswith(prefix)), reverse=True):
        subprocess.run(["umount", "--lazy", point], check=False)


# --- The product's images -----------------------------------------------------------


@dataclass(frozen=True)
class ImageSpec:
    """One image to build from a Dockerfile of the repository."""

    name: str
    """Short name: the key in ``images.json`` and on the command line."""
    dockerfile: str
    """Relative to the repository root, which is the build context."""
    ref: str
    """Tag given to the built image in containers-storage."""
    build_args: Mapping[str, str] = field(default_factory=dict)


OPERATOR = ImageSpec("operator", "operator/Dockerfile", "localhost/bert-pretrain-operator:dev")
TRAINER = ImageSpec(
    "trainer",
    "trainer_image/Dockerfile",
    "localhost/bert-trainer:dev",
    {"VARIANT": "cpu"},
)
#: The TPU variant; CI proves its packages with ``tpu_venv`` instead of building it.
TRAINER_TPU = ImageSpec(
    "trainer-tpu",
    "trainer_image/Dockerfile",
    "localhost/bert-trainer:dev-tpu",
    {"VARIANT": "tpu"},
)
IMAGES = (OPERATOR, TRAINER)
"""What ``build_images`` builds by default (and ``./dev setup`` with it)."""


@dataclass(frozen=True)
class BuiltImage:
    """An image in containers-storage, as ``build_image`` left it."""

    name: str
    ref: str
    image_id: str
    size_bytes: int
    build_seconds: float
    base: str


def build_image(spec: ImageSpec, base: str, log_path: Path | None = None) -> BuiltImage:
    """Build one image with buildah (cached layers; a warm build takes seconds).

    buildah's output goes to ``log_path`` (appended) when given, else to stderr.
    """
    if shutil.which("buildah") is None:
        raise RuntimeError("buildah is needed to build the images (apt-get install buildah)")
    started = time.monotonic()
    with _package_access() as volumes:
        command = [
            "buildah",
            "bud",
            "--layers",
            "--pull=never",
            "--network=host",
            *ULIMITS,
            "-f",
            str(REPO_ROOT / spec.dockerfile),
            "-t",
            spec.ref,
            "--build-arg",
            f"PYTHON_IMAGE={base}",
            *(
                arg
                for k, v in sorted(spec.build_args.items())
                for arg in ("--build-arg", f"{k}={v}")
            ),
            *(arg for volume in volumes for arg in ("--volume", volume)),
            str(REPO_ROOT),
        ]
        log.info("building %s from %s", spec.ref, spec.dockerfile)
        if log_path is None:
            subprocess.run(command, check=True, stdout=sys.stderr)
        else:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with log_path.open("ab") as out:
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=False)
            if result.returncode:
                raise RuntimeError(f"building {spec.ref} failed; buildah's output is in {log_path}")
    seconds = time.monotonic() - started
    built_id = image_id(spec.ref)
    if built_id is None:
        raise RuntimeError(f"buildah reported success but {spec.ref} is not in containers-storage")
    built = BuiltImage(spec.name, spec.ref, built_id, image_size(spec.ref), seconds, base)
    _record(built)
    log.info("%s: %s, %.2f GB, %.0fs", spec.name, spec.ref, built.size_bytes / 1e9, seconds)
    return built


def build_images(
    specs: Sequence[ImageSpec] = IMAGES, log_path: Path | None = None
) -> dict[str, BuiltImage]:
    """The base (if not cached) and then every image; returns them by name."""
    base = build_base()
    return {spec.name: build_image(spec, base, log_path) for spec in specs}


def built_images() -> dict[str, BuiltImage]:
    """What the last builds recorded (``images.json``), whatever built them."""
    path = cache_dir() / "images.json"
    if not path.exists():
        return {}
    return {name: BuiltImage(**entry) for name, entry in json.loads(path.read_text()).items()}


def _record(built: BuiltImage) -> None:
    recorded = {name: asdict(image) for name, image in built_images().items()}
    recorded[built.name] = asdict(built)
    path = cache_dir() / "images.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_suffix(f".tmp{os.getpid()}")
    staging.write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    staging.rename(path)


# --- Package access inside the build ------------------------------------------------

HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
_PIP_CONFIG_FILES = (Path("/etc/pip.conf"), Path("~/.config/pip/pip.conf"), Path("~/.pip/pip.conf"))
#: PIP_* variables that say how to reach an index (not how pip behaves otherwise).
_PIP_ENV_KEYS = ("index-url", "extra-index-url", "trusted-host", "cert", "proxy", "timeout")


def pip_config(environ: Mapping[str, str] = os.environ) -> configparser.ConfigParser:
    """The host's pip configuration of index access: its pip.conf files, then PIP_*."""
    config = configparser.ConfigParser()
    files = [path.expanduser() for path in _PIP_CONFIG_FILES]
    if environ.get("PIP_CONFIG_FILE"):
        files.append(Path(environ["PIP_CONFIG_FILE"]))
    config.read([str(path) for path in files if path.is_file()])
    if not config.has_section("global"):
        config.add_section("global")
    for key in _PIP_ENV_KEYS:
        value = environ.get("PIP_" + key.upper().replace("-", "_"))
        if value:
            config.set("global", key, value)
    if key_timeout := environ.get("PIP_DEFAULT_TIMEOUT"):
        config.set("global", "timeout", key_timeout)
    return config


def build_mounts(
    config: configparser.ConfigParser, pip_conf: Path, ca_bundle: Path = HOST_CA_BUNDLE
) -> list[str]:
    """``--volume`` values: the host's CA bundle, pip.conf, and any CA file it names."""
    mounts = [f"{pip_conf}:/etc/pip.conf:ro"]
    if ca_bundle.is_file():
        mounts.append(f"{ca_bundle.resolve()}:/etc/ssl/certs/ca-certificates.crt:ro")
    cert = config.get("global", "cert", fallback="")
    if cert and Path(cert).is_file() and Path(cert) != ca_bundle:
        mounts.append(f"{Path(cert).resolve()}:{cert}:ro")
    return mounts


@contextlib.contextmanager
def _package_access() -> Iterator[list[str]]:
    config = pip_config()
    with tempfile.TemporaryDirectory(prefix="bpj-pip.") as tmp:
        pip_conf = Path(tmp) / "pip.conf"
        with pip_conf.open("w") as f:
            config.write(f)
        pip_conf.chmod(0o644)
        Path(tmp).chmod(0o755)
        yield build_mounts(config, pip_conf)


# --- OCI archives for containerd ----------------------------------------------------


def export_oci_archive(image: str, path: Path | None = None) -> Path:
    """Write ``image`` as an OCI archive for ``ctr -n k8s.io images import``.

    The archive carries ``image`` (e.g. ``localhost/bert-trainer:dev``) as its
    reference name. Without ``path`` it goes to the cache, named by image ID; either
    way an archive already written for the same image ID is not written again (the ID
    sits next to it in ``<path>.id``). Returns the archive's path.
    """
    current = image_id(image)
    if current is None:
        raise FileNotFoundError(f"{image} is not in containers-storage; build it first")
    cached = path is None
    if path is None:
        digest = current.removeprefix("sha256:")[:16]
        path = cache_dir() / "oci" / f"{_archive_stem(image)}-{digest}.tar"
    stamp = path.with_name(path.name + ".id")
    if path.exists() and stamp.exists() and stamp.read_text().strip() == current:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.tmp{os.getpid()}")
    staging.unlink(missing_ok=True)
    started = time.monotonic()
    subprocess.run(
        ["podman", "save", "--quiet", "--format", "oci-archive", "-o", str(staging), image],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    staging.rename(path)
    stamp.write_text(current + "\n")
    log.info("exported %s to %s in %.0fs", image, path, time.monotonic() - started)
    if cached:
        # One archive per image in the cache: those of its earlier builds go.
        for older in path.parent.glob(f"{_archive_stem(image)}-*.tar"):
            if older != path:
                older.unlink(missing_ok=True)
                older.with_name(older.name + ".id").unlink(missing_ok=True)
    return path


def _archive_stem(image: str) -> str:
    return image.rsplit("/", 1)[-1].replace(":", "_")


# --- Lock files ---------------------------------------------------------------------


@dataclass(frozen=True)
class LockSpec:
    """One lock file compiled from the product's pyproject.toml."""

    path: str
    """Relative to the repository root."""
    extras: tuple[str, ...]


LOCKS = (
    LockSpec("operator/requirements.lock", ()),
    LockSpec("trainer_image/requirements-cpu.lock", ("trainer",)),
    LockSpec("trainer_image/requirements-tpu.lock", ("trainer", "tpu")),
)
TPU_LOCK = LOCKS[2]


def uv() -> list[str]:
    """How to run uv: the development environment has it as a package."""
    found = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def compile_lock(spec: LockSpec, output: Path, *, upgrade: bool = False) -> None:
    """``uv pip compile`` of the product's dependencies into ``output``.

    An existing ``output`` is kept as far as pyproject.toml allows (uv prefers its
    pins), so compiling again without changes gives the same file.
    """
    command = [
        *uv(),
        "pip",
        "compile",
        "--quiet",
        str(REPO_ROOT / "pyproject.toml"),
        *(arg for extra in spec.extras for arg in ("--extra", extra)),
        "--python-version",
        LOCK_PYTHON_VERSION,
        "--python-platform",
        LOCK_PYTHON_PLATFORM,
        "--generate-hashes",
        "--custom-compile-command",
        "bpj-devstack images lock",
        "-o",
        str(output),
    ]
    if upgrade:
        command.append("--upgrade")
    # Paths in the header and the "via" comments are written relative to the cwd.
    subprocess.run(command, cwd=REPO_ROOT, check=True)


def compile_locks(*, upgrade: bool = False) -> list[Path]:
    paths = []
    for spec in LOCKS:
        compile_lock(spec, REPO_ROOT / spec.path, upgrade=upgrade)
        paths.append(REPO_ROOT / spec.path)
    return paths


def lock_hash(spec: LockSpec) -> str:
    return hashlib.sha256((REPO_ROOT / spec.path).read_bytes()).hexdigest()[:16]


# --- The TPU variant's package set --------------------------------------------------


def tpu_venv(spec: LockSpec = TPU_LOCK) -> Path:
    """A virtual environment holding exactly the TPU lock, made once per lock hash.

    The product itself is not installed: checks put ``operator/`` and
    ``trainer_image/`` on PYTHONPATH, so a code change never remakes it.
    """
    venv = cache_dir() / f"venv-{Path(spec.path).stem}-{lock_hash(spec)}"
    stamp = venv / ".complete"
    if stamp.exists():
        return venv
    # A venv's scripts name its path, so it is made in place; the stamp, written
    # last, says it is whole (an interrupted install is made again).
    shutil.rmtree(venv, ignore_errors=True)
    started = time.monotonic()
    log.info("installing %s into %s", spec.path, venv)
    subprocess.run([*uv(), "venv", "--quiet", "--python", _python311(), str(venv)], check=True)
    subprocess.run(
        [
            *uv(),
            "pip",
            "sync",
            "--quiet",
            "--python",
            str(venv / "bin" / "python"),
            "--require-hashes",
            str(REPO_ROOT / spec.path),
        ],
        check=True,
    )
    stamp.write_text(f"installed in {time.monotonic() - started:.0f}s\n")
    # Those of earlier locks are 3 GB each.
    for older in venv.parent.glob(f"venv-{Path(spec.path).stem}-*"):
        if older != venv:
            shutil.rmtree(older, ignore_errors=True)
    return venv


def _python311() -> str:
    base = getattr(sys, "_base_executable", sys.executable)
    if sys.version_info[:2] == (3, 11):
        return str(base)
    found = shutil.which("python3.11")
    if found is None:
        raise RuntimeError("the TPU variant's packages need Python 3.11 (python3.11 on PATH)")
    return found


def tpu_venv_env(venv: Path) -> dict[str, str]:
    """Environment to run the product from the source tree with the TPU package set."""
    return {
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": os.pathsep.join(
            str(REPO_ROOT / part) for part in ("operator", "trainer_image")
        ),
        "VIRTUAL_ENV": str(venv),
    }


# --- Command line -------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bpj-devstack images",
        description="Build the product's images (buildah), export them, compile their locks.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    build = sub.add_parser("build", help="build the base, the images and the TPU package set")
    build.add_argument("names", nargs="*", help="images to build (default: operator, trainer)")
    build.add_argument("--no-tpu-venv", action="store_true", help="skip the TPU package set")
    export = sub.add_parser("export", help="write an image as an OCI archive")
    export.add_argument("image")
    export.add_argument("path", type=Path, nargs="?")
    lock = sub.add_parser("lock", help="compile the lock files from pyproject.toml")
    lock.add_argument("--upgrade", action="store_true", help="newest versions allowed")
    sub.add_parser("list", help="print what the last builds recorded")
    args = parser.parse_args(argv)

    if args.action == "build":
        by_name = {spec.name: spec for spec in (OPERATOR, TRAINER, TRAINER_TPU)}
        unknown = [name for name in args.names if name not in by_name]
        if unknown:
            parser.error(f"unknown image {unknown}; choose from {sorted(by_name)}")
        specs = [by_name[name] for name in args.names] or list(IMAGES)
        for image in build_images(specs).values():
            print(f"{image.name}\t{image.ref}\t{image.size_bytes / 1e9:.2f} GB")
        if not args.no_tpu_venv:
            print(f"tpu-venv\t{tpu_venv()}")
    elif args.action == "export":
        print(export_oci_archive(args.image, args.path))
    elif args.action == "lock":
        for path in compile_locks(upgrade=args.upgrade):
            print(path.relative_to(REPO_ROOT))
    elif args.action == "list":
        print(json.dumps({k: asdict(v) for k, v in built_images().items()}, indent=2))
    return 0
