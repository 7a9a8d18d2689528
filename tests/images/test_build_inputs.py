"""What an image build takes besides its Dockerfile: the base's key, the host's package access."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from bpj_devstack import images


def test_the_base_is_keyed_by_its_recipe() -> None:
    recipe = images.BaseRecipe()
    assert recipe.key() == images.BaseRecipe().key()
    assert recipe.ref == f"localhost/bpj-devstack/python-base:bookworm-{recipe.key()}"
    more = dataclasses.replace(recipe, packages=(*recipe.packages, "curl"))
    other_step = dataclasses.replace(recipe, steps=recipe.steps[:1])
    assert len({recipe.key(), more.key(), other_step.key()}) == 3
    # Where it is stored is not what it is.
    assert dataclasses.replace(recipe, repository="localhost/x").key() == recipe.key()
    assert recipe.tarball.parent == images.cache_dir()


def test_pip_access_merges_the_hosts_pip_conf_and_pip_variables(
    tmp_path: Path,
) -> None:
    conf = tmp_path / "pip.conf"
    conf.write_text("[global]\nindex-url = https://mirror.example/simple\ncert = /etc/x.pem\n")
    config = images.pip_config(
        {
            "PIP_CONFIG_FILE": str(conf),
            "PIP_CERT": "/etc/ssl/certs/ca-certificates.crt",
            "PIP_DEFAULT_TIMEOUT": "180",
            "PIP_FIND_LINKS": "/opt/wheels",  # a host path: not for the build
        }
    )
    assert config.get("global", "index-url") == "https://mirror.example/simple"
    assert config.get("global", "cert") == "/etc/ssl/certs/ca-certificates.crt"
    assert config.get("global", "timeout") == "180"
    assert not config.has_option("global", "find-links")


def test_package_access_is_mounted_read_only(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    extra = tmp_path / "proxy-ca.pem"
    extra.write_text("-----BEGIN CERTIFICATE-----\n")
    config = images.pip_config({"PIP_CONFIG_FILE": "/nonexistent", "PIP_CERT": str(extra)})
    mounts = images.build_mounts(config, tmp_path / "pip.conf", ca_bundle=bundle)
    assert mounts == [
        f"{tmp_path / 'pip.conf'}:/etc/pip.conf:ro",
        f"{bundle}:/etc/ssl/certs/ca-certificates.crt:ro",
        f"{extra}:{extra}:ro",
    ]
