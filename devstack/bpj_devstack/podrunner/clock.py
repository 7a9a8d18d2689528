"""Timestamps in the formats the Kubernetes API expects (pod and node status, leases)."""

from __future__ import annotations

import datetime as dt


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _now_micro() -> str:
    """A MicroTime, the format of Lease.spec.renewTime."""
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
