"""The packaging split: the product's wheel holds the product, each part declares what it imports.

Two distributions: the product (``pyproject.toml``: bert_pretrain_operator and
bert_trainer) and the development stack (``devstack/pyproject.toml``:
bpj_devstack). A third-party package is declared by the part that imports it:
the operator's in the product's base dependencies, the trainer's in its
``trainer`` extra, the stack's in its own distribution.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bpj_devstack import images

REPO_ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"bert_pretrain_operator", "bert_trainer", "bpj_devstack"}
#: Modules that come with a declared package, as part of its API: google-cloud-storage
#: raises google.api_core's exceptions and takes google.auth's credentials; the
#: kubernetes client raises urllib3's exceptions when the API server is away; pydantic
#: pins pydantic-core exactly and documents its core_schema.
PROVIDED_BY = {
    "google.cloud.storage": "google-cloud-storage",
    "google.api_core": "google-cloud-storage",
    "google.auth": "google-cloud-storage",
    "urllib3.exceptions": "kubernetes",
    "pydantic_core": "pydantic",
}


def imported_modules(root: Path) -> set[str]:
    """Dotted names of the absolute imports under ``root``."""
    names: set[str] = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                # `from google.cloud import storage` imports google.cloud.storage.
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def distributions_of(modules: Iterable[str]) -> set[str]:
    """The third-party distributions providing ``modules`` (installed in this venv)."""
    top_level = md.packages_distributions()
    found: set[str] = set()
    for module in modules:
        top = module.split(".")[0]
        if top in FIRST_PARTY or top in sys.stdlib_module_names or top == "__future__":
            continue
        provider = next(
            (dist for prefix, dist in PROVIDED_BY.items() if module.startswith(prefix)),
            None,
        )
        if provider is None:
            dists = top_level.get(top, [])
            assert len(dists) == 1, f"{module}: provided by {dists or 'nothing installed'}"
            provider = dists[0]
        found.add(canonicalize_name(provider))
    return found


def declared(requirements: Iterable[str]) -> set[str]:
    return {canonicalize_name(Requirement(r).name) for r in requirements}


PRODUCT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
DEVSTACK = tomllib.loads((REPO_ROOT / "devstack" / "pyproject.toml").read_text())["project"]


def test_each_part_declares_what_it_imports() -> None:
    operator = distributions_of(imported_modules(REPO_ROOT / "operator/bert_pretrain_operator"))
    trainer = distributions_of(imported_modules(REPO_ROOT / "trainer_image/bert_trainer"))
    devstack = distributions_of(imported_modules(REPO_ROOT / "devstack/bpj_devstack"))
    base = declared(PRODUCT["dependencies"])
    trainer_extra = declared(PRODUCT["optional-dependencies"]["trainer"])
    # `bpj render` of a job with an init checkpoint alone imports the GCS client, lazily:
    # the operator process reads no bucket (.importlinter's operator-reads-no-bucket).
    gcs_extra = declared(PRODUCT["optional-dependencies"]["gcs"])

    assert operator <= base | gcs_extra, f"the operator imports undeclared {operator - base}"
    assert gcs_extra <= operator
    assert trainer <= base | trainer_extra, f"undeclared: {trainer - base - trainer_extra}"
    # Nothing is declared that its part does not import (the trainer's config, which the
    # operator imports, shares pydantic with it).
    assert base <= operator | trainer
    assert trainer_extra <= trainer
    assert not base & trainer_extra and not base & gcs_extra
    assert "kubernetes" in base  # kube.py's credentials and connections
    assert {
        "tokenizers",
        "tensorflow",
        "cryptography",
        "google-cloud-storage",
    }.isdisjoint(base)
    stack = declared(DEVSTACK["dependencies"]) - {"bert-pretrain-operator"}
    assert devstack <= stack, f"the development stack imports undeclared {devstack - stack}"
    assert stack <= devstack, f"the development stack declares unused {stack - devstack}"


def test_the_tpu_extra_adds_only_the_tpu_runtime() -> None:
    (tpu,) = [Requirement(r) for r in PRODUCT["optional-dependencies"]["tpu"]]
    # libtpu is never imported: JAX loads it as its TPU plugin.
    assert tpu.name == "jax" and tpu.extras == {"tpu"}
    (jax,) = [
        Requirement(r)
        for r in PRODUCT["optional-dependencies"]["trainer"]
        if Requirement(r).name == "jax"
    ]
    assert tpu.specifier == jax.specifier, "jax[tpu] must be the trainer's jax"


def test_console_scripts_are_split() -> None:
    assert set(PRODUCT["scripts"]) == {"bpj", "bert-trainer"}
    assert set(DEVSTACK["scripts"]) == {"bpj-devstack"}


@pytest.fixture(scope="module")
def product_wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The product's wheel, built from a copy of the working tree (the tree stays clean)."""
    tree = tmp_path_factory.mktemp("tree")
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        source = REPO_ROOT / os.fsdecode(name)
        if source.is_file():
            target = tree / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    out = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [*images.uv(), "build", "--quiet", "--wheel", "--out-dir", str(out), str(tree)],
        check=True,
    )
    (wheel,) = out.glob("bert_pretrain_operator-*.whl")
    return wheel


def test_the_product_wheel_holds_no_development_stack(product_wheel: Path) -> None:
    with zipfile.ZipFile(product_wheel) as wheel:
        names = wheel.namelist()
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in wheel.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith("-info")}
    assert packages == {"bert_pretrain_operator", "bert_trainer"}
    assert "bpj-devstack" not in scripts and "bpj_devstack" not in scripts
    assert "bpj =" in scripts and "bert-trainer =" in scripts
    base = {Requirement(r).name.lower() for r in requires if not Requirement(r).marker}
    assert "cryptography" not in base and "tokenizers" not in base
    assert "kubernetes" in base  # the operator's credentials and connections (kube.py)


def test_a_plain_install_of_the_product_runs_the_cli(product_wheel: Path, tmp_path: Path) -> None:
    """No extras: ``bpj`` and the operator's entry module work (what the operator image has)."""
    venv = tmp_path / "venv"
    subprocess.run(
        [*images.uv(), "venv", "--quiet", "--python", sys.executable, str(venv)], check=True
    )
    subprocess.run(
        [
            *images.uv(),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv / "bin/python"),
            str(product_wheel),
        ],
        check=True,
    )
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    validated = subprocess.run(
        [str(venv / "bin/bpj"), "validate", str(REPO_ROOT / "examples/quickstart.yaml")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert validated.returncode == 0, validated.stdout + validated.stderr
    imported = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import bert_pretrain_operator.__main__, importlib.util as u; "
            "print([m for m in ('bpj_devstack', 'tensorflow', 'google') if u.find_spec(m)])",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        check=False,
    )
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"
