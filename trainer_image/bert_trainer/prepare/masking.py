"""``[CLS] A [SEP] B [SEP]`` rows and their masked-LM predictions, for a whole batch at once.

The masking follows google-research/bert's ``create_masked_lm_predictions``:

- candidates are all tokens but ``[CLS]`` and ``[SEP]``; with whole-word
  masking a ``##`` piece joins the candidate group before it;
- ``num_to_predict = min(max_predictions_per_seq, max(1, round(len * masked_lm_prob)))``
  where ``len`` counts the special tokens too;
- groups are visited in random order, and one is taken when it still fits in
  ``num_to_predict`` (a whole word that would overflow is skipped);
- each chosen position becomes ``[MASK]`` 80 % of the time, keeps its token
  10 % of the time and becomes a uniformly random vocab id 10 % of the time;
- positions are reported in ascending order, padded with zeros (weight 0).

Every step is a numpy operation over the ``(instances, max_seq_length)``
matrix; the only loop runs over group ranks and stops once every row is full.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from bert_trainer.prepare.instances import Pairs

IntArray = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]
_A = TypeVar("_A", npt.NDArray[np.int32], npt.NDArray[np.float32])


@dataclass(frozen=True)
class SpecialIds:
    cls: int
    sep: int
    mask: int
    vocab_size: int
    is_continuation: BoolArray
    """Per vocab id: does the token start with ``##`` (only used for whole-word masking)."""


@dataclass(frozen=True)
class Instances:
    """The google-research/bert features of a batch, already padded.

    Held as int32 to halve memory traffic; the records store them as int64
    (``Int64List``) as google-research/bert's do.
    """

    input_ids: IntArray
    input_mask: IntArray
    segment_ids: IntArray
    masked_lm_positions: IntArray
    masked_lm_ids: IntArray
    masked_lm_weights: npt.NDArray[np.float32]
    next_sentence_labels: IntArray

    def __len__(self) -> int:
        return len(self.input_ids)

    def features(self) -> dict[str, IntArray | npt.NDArray[np.float32]]:
        """Feature name to a ``(instances, width)`` array, in google-research/bert's order."""
        return {
            "input_ids": self.input_ids,
            "input_mask": self.input_mask,
            "segment_ids": self.segment_ids,
            "masked_lm_positions": self.masked_lm_positions,
            "masked_lm_ids": self.masked_lm_ids,
            "masked_lm_weights": self.masked_lm_weights,
            "next_sentence_labels": self.next_sentence_labels,
        }


def make_instances(
    token_ids: npt.NDArray[np.int32],
    pairs: Pairs,
    special: SpecialIds,
    *,
    max_seq_length: int,
    max_predictions_per_seq: int,
    masked_lm_prob: float,
    whole_word_masking: bool,
    rng: np.random.Generator,
) -> Instances:
    n, width = len(pairs), max_seq_length
    col = np.arange(width, dtype=np.int32)[None, :]
    a_len = pairs.a_length.astype(np.int32)[:, None]
    length = a_len + pairs.b_length.astype(np.int32)[:, None] + 3
    first_sep = a_len + 1
    in_a = (col >= 1) & (col < first_sep)
    candidate = in_a | ((col > first_sep) & (col < length - 1))
    # Offsets into the corpus may pass 2**31, so the gather index stays int64.
    source = np.where(
        in_a, pairs.a_start[:, None] - 1 + col, pairs.b_start[:, None] - first_sep - 1 + col
    )
    source[~candidate] = 0
    ids = token_ids[source]
    ids[~candidate] = 0
    rows = np.arange(n)
    ids[:, 0] = special.cls
    ids[rows, first_sep[:, 0]] = special.sep
    ids[rows, length[:, 0] - 1] = special.sep
    input_mask = (col < length).astype(np.int32)
    segment_ids = ((col > first_sep) & (col < length)).astype(np.int32)

    num_to_predict = np.minimum(
        max_predictions_per_seq, np.maximum(1, np.rint(length[:, 0] * masked_lm_prob))
    ).astype(np.int32)
    slots = min(max_predictions_per_seq, width)
    if whole_word_masking:
        positions = _choose_words(candidate, ids, special, num_to_predict, slots, rng)
    else:
        positions = _choose_tokens(candidate, num_to_predict, slots, rng)
    valid = positions < width
    positions[~valid] = 0
    labels = np.take_along_axis(ids, positions, axis=1)
    labels[~valid] = 0

    draw = rng.random((n, slots))
    keep = rng.random((n, slots)) < 0.5
    random_ids = rng.integers(0, special.vocab_size, size=(n, slots), dtype=np.int32)
    replacement = np.where(draw < 0.8, special.mask, np.where(keep, labels, random_ids))
    masked_rows, masked_slots = np.nonzero(valid)
    ids[masked_rows, positions[masked_rows, masked_slots]] = replacement[masked_rows, masked_slots]

    pad = max_predictions_per_seq - slots
    return Instances(
        input_ids=ids,
        input_mask=input_mask,
        segment_ids=segment_ids,
        masked_lm_positions=_pad(positions.astype(np.int32), pad),
        masked_lm_ids=_pad(labels, pad),
        masked_lm_weights=_pad(valid.astype(np.float32), pad),
        next_sentence_labels=pairs.is_random_next.astype(np.int32)[:, None],
    )


def _choose_tokens(
    candidate: BoolArray, num_to_predict: IntArray, slots: int, rng: np.random.Generator
) -> IntArray:
    """Per row, ``num_to_predict`` uniformly random candidates, ascending, padded with width.

    The candidates with the smallest random keys: the first ones after a shuffle.
    """
    n, width = candidate.shape
    keys = rng.random((n, width))
    keys[~candidate] = 2.0
    if slots < width:
        smallest = np.argpartition(keys, slots - 1, axis=1)[:, :slots]
    else:
        smallest = np.broadcast_to(np.arange(width), (n, width))
    smallest_keys = np.take_along_axis(keys, smallest, axis=1)
    order = np.argsort(smallest_keys, axis=1)
    ranked = np.take_along_axis(smallest, order, axis=1)
    ranked_keys = np.take_along_axis(smallest_keys, order, axis=1)
    take = (np.arange(slots) < num_to_predict[:, None]) & (ranked_keys < 2.0)
    positions: IntArray = np.sort(np.where(take, ranked, width), axis=1).astype(np.int32)
    return positions


def _choose_words(
    candidate: BoolArray,
    ids: IntArray,
    special: SpecialIds,
    num_to_predict: IntArray,
    slots: int,
    rng: np.random.Generator,
) -> IntArray:
    """Whole-word masking: google-research/bert's greedy walk over shuffled word groups.

    Returns the chosen positions per row, ascending, padded with ``width``.
    """
    n, width = candidate.shape
    # A row's first candidate starts a group even when it is a ## piece; a ## piece
    # right after [SEP] joins the group before it, as in the original.
    first_candidate = np.cumsum(candidate, axis=1) == 1
    group_start = candidate & (~special.is_continuation[ids] | first_candidate)
    group = np.cumsum(group_start, axis=1) - 1
    num_groups = group_start.sum(axis=1)

    flat_group = (np.arange(n)[:, None] * width + group)[candidate]
    group_size = np.bincount(flat_group, minlength=n * width).reshape(n, width)

    keys = rng.random((n, width))
    keys[np.arange(width)[None, :] >= num_groups[:, None]] = 2.0
    order = np.argsort(keys, axis=1)
    size_in_order = np.take_along_axis(group_size, order, axis=1)

    taken_in_order = np.zeros((n, width), dtype=bool)
    total = np.zeros(n, dtype=np.int64)
    for rank in range(width):
        open_rows = (total < num_to_predict) & (rank < num_groups)
        if not open_rows.any():
            break
        size = size_in_order[:, rank]
        fits = open_rows & (total + size <= num_to_predict)
        taken_in_order[:, rank] = fits
        total += np.where(fits, size, 0)

    taken = np.zeros((n, width), dtype=bool)
    np.put_along_axis(taken, order, taken_in_order, axis=1)
    chosen = candidate & np.take_along_axis(taken, np.maximum(group, 0), axis=1)
    columns = np.where(chosen, np.arange(width), width)
    positions: IntArray = np.sort(columns, axis=1)[:, :slots].astype(np.int32)
    return positions


def _pad(array: _A, columns: int) -> _A:
    """Zero columns on the right: only when max_predictions_per_seq > max_seq_length."""
    if columns == 0:
        return array
    padded: _A = np.pad(array, ((0, 0), (0, columns)))
    return padded
