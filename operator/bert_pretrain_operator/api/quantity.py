"""Kubernetes quantities (``500m``, ``2``, ``8Gi``, ``512M``) as numbers, for the Python rules.

The API server compares them with CEL's ``quantity()`` library; the Python mirror of a
rule (``cel.Rule.holds``) needs the same comparison. Only the forms ``QUANTITY_PATTERN``
admits are parsed: a decimal number and one SI or binary suffix, no exponent.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

#: A Kubernetes quantity as CPU and memory requests use it: 500m, 2, 1.5, 8Gi, 512M.
QUANTITY_PATTERN: Final = r"^[0-9]+([.][0-9]+)?(m|k|M|G|T|P|Ki|Mi|Gi|Ti|Pi)?$"

_MULTIPLIERS: Final = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10) ** 3,
    "M": Decimal(10) ** 6,
    "G": Decimal(10) ** 9,
    "T": Decimal(10) ** 12,
    "P": Decimal(10) ** 15,
    "Ki": Decimal(2) ** 10,
    "Mi": Decimal(2) ** 20,
    "Gi": Decimal(2) ** 30,
    "Ti": Decimal(2) ** 40,
    "Pi": Decimal(2) ** 50,
}
_SPLIT: Final = re.compile(r"^([0-9]+(?:[.][0-9]+)?)([A-Za-z]*)$")


def parse(quantity: str) -> Decimal:
    """The value of ``quantity`` (cores for CPU, bytes for memory); ValueError if malformed."""
    match = _SPLIT.match(quantity)
    if match is None or match.group(2) not in _MULTIPLIERS:
        raise ValueError(f"not a Kubernetes quantity: {quantity!r}")
    return Decimal(match.group(1)) * _MULTIPLIERS[match.group(2)]
