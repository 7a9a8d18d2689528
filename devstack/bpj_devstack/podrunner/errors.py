"""The exception by which the local pod runner refuses a pod it cannot run as specified."""

from __future__ import annotations


class PodRejected(Exception):
    """This runner cannot run the pod as specified; the message becomes the pod's status."""
