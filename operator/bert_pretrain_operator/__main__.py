"""``python -m bert_pretrain_operator``: run the operator (what the chart's Deployment runs)."""

from __future__ import annotations

import logging
import sys

# kopf imports the official `kubernetes` client whenever it is installed (it is: the
# trainer uses it), to recognise that client's model objects in kopf.adopt() and the
# like, and to offer a login through it; the operator uses neither (handlers.login reads
# the credentials itself). Importing it costs about 50 MB of memory that nothing in this
# process uses, so it is hidden while kopf and its handler registry are set up. Nothing
# of the operator's own imports it (.importlinter).
_hidden = "kubernetes" not in sys.modules
if _hidden:
    sys.modules["kubernetes"] = None  # type: ignore[assignment]
try:
    import kopf

    from bert_pretrain_operator import handlers as _handlers  # noqa: F401  (registers handlers)
finally:
    if _hidden:
        del sys.modules["kubernetes"]

from bert_pretrain_operator.logs import configure_logging  # noqa: E402
from bert_pretrain_operator.settings import Settings  # noqa: E402


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
