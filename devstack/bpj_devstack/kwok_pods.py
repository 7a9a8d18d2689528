"""Annotating KWOK's pods as they are created: its chaos and its pods' reports.

A KWOK pod runs no program; what it does is read from its annotations
(``kwok_config``: how long it runs, how it fails, its termination message). The pods
are the Job controller's, so the annotations are set the moment each one appears, by
a watch on a label selector. The tests and benchmarks/operator_scale.py use this.
"""

from __future__ import annotations

import json
import threading
from typing import Any

from bert_pretrain_operator.render import names
from bpj_devstack import kwok_config


class PodAnnotator:
    """Annotates the pods a selector matches the moment they are created: KWOK's chaos
    and its pods' reports (``bpj_devstack.kwok_config``'s annotations).

    Each selector is watched until ``close``, through API server restarts: a watch the
    server cut is opened again (its first events list the pods already there, and
    annotating a pod twice changes nothing).
    """

    def __init__(self, kube_api: Any) -> None:
        from kubernetes import client

        self._core = client.CoreV1Api(kube_api)
        self._done = threading.Event()
        self._watches: list[Any] = []

    def annotate(self, namespace: str, selector: str, annotations: dict[str, str]) -> None:
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        w = watch.Watch()
        core, done = self._core, self._done

        def run() -> None:
            while not done.is_set():
                try:
                    for event in w.stream(
                        core.list_namespaced_pod,
                        namespace,
                        label_selector=selector,
                        timeout_seconds=60,
                    ):
                        if event["type"] == "ADDED":
                            core.patch_namespaced_pod(
                                event["object"].metadata.name,
                                namespace,
                                {"metadata": {"annotations": annotations}},
                            )
                except (ApiException, HTTPError):
                    done.wait(0.5)  # retry pacing while the API server is away

        threading.Thread(target=run, daemon=True).start()
        self._watches.append(w)

    def report_check(self, namespace: str, job: str, report: dict[str, Any]) -> None:
        """The report job ``job``'s KWOK check pod gives, as the real ``bert-trainer check``
        would: a KWOK pod runs no program, so it reports ``{}`` unless told."""
        self.annotate(
            namespace,
            f"{names.LABEL_JOB}={job},{names.LABEL_STAGE}={names.STAGE_CHECK}",
            {kwok_config.EXIT_MESSAGE: json.dumps(report)},
        )

    def close(self) -> None:
        self._done.set()
        for w in self._watches:
            w.stop()

    def __enter__(self) -> PodAnnotator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
