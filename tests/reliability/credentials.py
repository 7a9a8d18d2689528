"""Finding secret material in specs, status and logs: the stack's secrets by value, any by shape.

By value (``stack_secrets``): every private key under the run directory's
``pki/`` (any 32+ character line of its base64 body, so a key shows up even
without its PEM header or inside JSON; also the key file base64-encoded whole, as
kubeconfig's ``client-key-data`` holds it), every service-account token the pod
runner gave a pod (``pods/<ns>/<pod>/kubeconfig``; the token or its signature),
and the fake GCS access token TensorFlow sends (``GOOGLE_AUTH_TOKEN_FOR_TESTING``).

By shape (``PATTERNS``): a PEM ``PRIVATE KEY`` block, an ``Authorization:
Bearer`` header in any serialisation, a bearer token, a JSON Web Token (what
service-account tokens are).

Findings name the secret or pattern, the source and the line, never the value.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

PATTERNS: Mapping[str, re.Pattern[str]] = {
    "PEM private key block": re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
    "Authorization: Bearer header": re.compile(
        r"""(?i)authorization["']?\s*[:=]\s*["']?\s*bearer\s+[^\s"',]+"""
    ),
    "bearer token": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9._~+/-]{20,}"),
    "JSON Web Token": re.compile(
        r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
    ),
}

_MIN_FRAGMENT = 32


@dataclass(frozen=True)
class Secret:
    """A secret known by value: any of ``fragments`` appearing reveals it."""

    name: str
    fragments: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    source: str
    line: int
    what: str
    """The secret's name or the pattern's, never the value."""

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.what}"


def private_key(name: str, pem: str) -> Secret:
    body = [line.strip() for line in pem.splitlines() if line.strip() and "-----" not in line]
    fragments = {line for line in body if len(line) >= _MIN_FRAGMENT}
    fragments.add("".join(body))
    # Kubeconfig's client-key-data holds the whole file base64-encoded. Its start encodes the
    # header and the DER prefix every key of the type shares; the middle is this key's own.
    encoded = base64.b64encode(pem.encode()).decode()
    middle = len(encoded) // 2
    fragments.add(encoded[middle - _MIN_FRAGMENT // 2 : middle + _MIN_FRAGMENT // 2])
    return Secret(name, tuple(sorted(fragments)))


def token(name: str, value: str) -> Secret:
    fragments = {value}
    signature = value.rsplit(".", 1)[-1]
    if value.count(".") == 2 and len(signature) >= _MIN_FRAGMENT:
        fragments.add(signature)  # a JWT's secret-bearing part, should one be cut short
    return Secret(name, tuple(sorted(fragments)))


def stack_secrets(run_dir: Path, fake_gcs_token: str) -> list[Secret]:
    """The secrets a devstack run directory holds (keys, pod tokens) and the fake GCS token."""
    secrets = [
        private_key(f"private key {path.relative_to(run_dir)}", path.read_text())
        for path in sorted(run_dir.glob("pki/*.key"))
    ]
    # The demo saves each pod's projected service-account token (as the kubelet mounted
    # it) under tokens/<namespace>/<pod>.token before the stack stops.
    for path in sorted(run_dir.glob("tokens/*/*.token")):
        pod = f"{path.parent.name}/{path.stem}"
        secrets.append(token(f"service-account token of pod {pod}", path.read_text().strip()))
    secrets.append(token("GOOGLE_AUTH_TOKEN_FOR_TESTING value", fake_gcs_token))
    return secrets


def scan(texts: Mapping[str, str], secrets: Iterable[Secret]) -> list[Finding]:
    """Where ``secrets`` (by value) or ``PATTERNS`` (by shape) occur in ``texts`` (source: text)."""
    secrets = list(secrets)
    findings = []
    for source, text in texts.items():
        for number, line in enumerate(text.splitlines(), 1):
            for secret in secrets:
                if any(fragment in line for fragment in secret.fragments):
                    findings.append(Finding(source, number, secret.name))
            for name, pattern in PATTERNS.items():
                if pattern.search(line):
                    findings.append(Finding(source, number, name))
    return findings
