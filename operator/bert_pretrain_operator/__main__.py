"""``python -m bert_pretrain_operator``: run the operator (what the chart's Deployment runs)."""

from __future__ import annotations

import logging

import kopf

from bert_pretrain_operator import handlers as _handlers  # noqa: F401  (registers handlers)
from bert_pretrain_operator.logs import configure_logging
from bert_pretrain_operator.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    configure_logging(logging.INFO)
    liveness = f"http://0.0.0.0:{settings.health_port}/healthz" if settings.health_port else None
    kopf.run(
        standalone=settings.peering_name is None,
        peering_name=settings.peering_name,
        namespaces=list(settings.namespaces),
        clusterwide=not settings.namespaces,
        liveness_endpoint=liveness,
    )


if __name__ == "__main__":
    main()
