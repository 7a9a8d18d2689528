"""BERT's named model sizes as plain data (the presets of ``spec.model.size``).

The table is google-research/bert's README ("BERT-Tiny" ... "BERT-Large"):
L layers, H hidden units, H/64 attention heads and a 4H feed-forward layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Final

#: Hidden units per attention head in every named size (google-research/bert).
HEAD_SIZE: Final = 64
#: Feed-forward (intermediate) width as a multiple of the hidden size.
INTERMEDIATE_MULTIPLE: Final = 4


class ModelSize(StrEnum):
    """A named BERT size, smallest first."""

    TINY = "tiny"
    MINI = "mini"
    SMALL = "small"
    MEDIUM = "medium"
    BASE = "base"
    LARGE = "large"


@dataclass(frozen=True)
class Dimensions:
    """The dimensions that define a BERT encoder (bert_config.json's names, snake_case)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int

    @classmethod
    def of(cls, num_layers: int, hidden_size: int) -> Dimensions:
        """Dimensions following BERT's conventions: H/64 heads, a 4H feed-forward layer."""
        return cls(
            hidden_size=hidden_size,
            num_layers=num_layers,
            num_heads=hidden_size // HEAD_SIZE,
            intermediate_size=INTERMEDIATE_MULTIPLE * hidden_size,
        )


#: ModelSize -> Dimensions, as in google-research/bert's table of 24 smaller models
#: (tiny L-2/H-128, mini L-4/H-256, small L-4/H-512, medium L-8/H-512) and the
#: original BERT-Base (L-12/H-768) and BERT-Large (L-24/H-1024).
SIZES: Final[Mapping[ModelSize, Dimensions]] = MappingProxyType(
    {
        ModelSize.TINY: Dimensions.of(num_layers=2, hidden_size=128),
        ModelSize.MINI: Dimensions.of(num_layers=4, hidden_size=256),
        ModelSize.SMALL: Dimensions.of(num_layers=4, hidden_size=512),
        ModelSize.MEDIUM: Dimensions.of(num_layers=8, hidden_size=512),
        ModelSize.BASE: Dimensions.of(num_layers=12, hidden_size=768),
        ModelSize.LARGE: Dimensions.of(num_layers=24, hidden_size=1024),
    }
)
