"""``python -m bpj_devstack.podrunner``: runs the local pod runner (see ``cli.main``)."""

from __future__ import annotations

import sys

from bpj_devstack.podrunner.cli import main

if __name__ == "__main__":
    sys.exit(main())
