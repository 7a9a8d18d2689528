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

It runs as one compiled loop over the rows (``compiled``), drawing from the
task's generator.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bert_trainer.prepare import compiled
from bert_trainer.prepare.instances import Pairs

IntArray = npt.NDArray[np.int32]
BoolArray = npt.NDArray[np.bool_]


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
    input_ids = np.zeros((n, width), dtype=np.int32)
    input_mask = np.zeros((n, width), dtype=np.int32)
    segment_ids = np.zeros((n, width), dtype=np.int32)
    positions = np.zeros((n, max_predictions_per_seq), dtype=np.int32)
    labels = np.zeros((n, max_predictions_per_seq), dtype=np.int32)
    weights = np.zeros((n, max_predictions_per_seq), dtype=np.float32)
    _mask_rows(
        # Contiguous arrays of fixed dtypes: one compiled signature (see ``kernels``).
        np.ascontiguousarray(token_ids, dtype=np.int32),
        np.ascontiguousarray(pairs.a_start, dtype=np.int64),
        np.ascontiguousarray(pairs.a_length, dtype=np.int64),
        np.ascontiguousarray(pairs.b_start, dtype=np.int64),
        np.ascontiguousarray(pairs.b_length, dtype=np.int64),
        special.cls,
        special.sep,
        special.mask,
        special.vocab_size,
        np.ascontiguousarray(special.is_continuation, dtype=np.bool_)
        if whole_word_masking
        else np.zeros(0, dtype=np.bool_),
        whole_word_masking,
        masked_lm_prob,
        rng,
        input_ids,
        input_mask,
        segment_ids,
        positions,
        labels,
        weights,
    )
    return Instances(
        input_ids=input_ids,
        input_mask=input_mask,
        segment_ids=segment_ids,
        masked_lm_positions=positions,
        masked_lm_ids=labels,
        masked_lm_weights=weights,
        next_sentence_labels=pairs.is_random_next.astype(np.int32)[:, None],
    )


@compiled.kernel
def _mask_rows(
    token_ids: npt.NDArray[np.int32],
    a_start: npt.NDArray[np.int64],
    a_length: npt.NDArray[np.int64],
    b_start: npt.NDArray[np.int64],
    b_length: npt.NDArray[np.int64],
    cls: int,
    sep: int,
    mask: int,
    vocab_size: int,
    is_continuation: BoolArray,
    whole_word_masking: bool,
    masked_lm_prob: float,
    rng: np.random.Generator,
    input_ids: IntArray,
    input_mask: IntArray,
    segment_ids: IntArray,
    positions: IntArray,
    labels: IntArray,
    weights: npt.NDArray[np.float32],
) -> None:
    """Fill the (zeroed) output rows: ids, masks, then each row's predictions."""
    n, width = input_ids.shape
    max_predictions = positions.shape[1]
    candidates = np.empty(width, dtype=np.int64)
    group_first = np.empty(width + 1, dtype=np.int64)
    chosen = np.zeros(width, dtype=np.bool_)
    for row in range(n):
        ids = input_ids[row]
        a_len, b_len = a_length[row], b_length[row]
        length = a_len + b_len + 3
        ids[0] = cls
        for k in range(a_len):
            ids[1 + k] = token_ids[a_start[row] + k]
        ids[a_len + 1] = sep
        for k in range(b_len):
            ids[a_len + 2 + k] = token_ids[b_start[row] + k]
        ids[length - 1] = sep
        for col in range(length):
            input_mask[row, col] = 1
        for col in range(a_len + 2, length):
            segment_ids[row, col] = 1

        num_candidates = 0
        for col in range(1, length - 1):
            if col != a_len + 1:
                candidates[num_candidates] = col
                num_candidates += 1
        # google-research/bert rounds half to even (Python 3's round): so does rint.
        num_to_predict = min(max_predictions, max(1, int(np.rint(length * masked_lm_prob))))

        if whole_word_masking:
            # Candidate groups: a ## piece joins the group before it, except a row's
            # first candidate, which starts one; so does a ## piece right after [SEP]
            # join the group before the [SEP], as in the original.
            groups = 0
            for k in range(num_candidates):
                if k == 0 or not is_continuation[ids[candidates[k]]]:
                    group_first[groups] = k
                    groups += 1
            group_first[groups] = num_candidates
            order = np.arange(groups)
            rng.shuffle(order)
            total = 0
            for g in order:
                if total >= num_to_predict:
                    break
                size = group_first[g + 1] - group_first[g]
                # A whole word that would overflow is skipped, as in the original.
                if total + size <= num_to_predict:
                    for k in range(group_first[g], group_first[g + 1]):
                        chosen[candidates[k]] = True
                    total += size
        else:
            # A partial Fisher-Yates shuffle: the first num_to_predict candidates.
            total = min(num_to_predict, num_candidates)
            for k in range(total):
                j = k + int(rng.random() * (num_candidates - k))
                candidates[k], candidates[j] = candidates[j], candidates[k]
                chosen[candidates[k]] = True

        # Positions ascending; each masked 80 % [MASK], 10 % kept, 10 % a random id.
        slot = 0
        for col in range(1, length - 1):
            if not chosen[col]:
                continue
            chosen[col] = False
            if slot == max_predictions:
                continue
            label = ids[col]
            positions[row, slot] = col
            labels[row, slot] = label
            weights[row, slot] = 1.0
            if rng.random() < 0.8:
                ids[col] = mask
            elif rng.random() >= 0.5:
                ids[col] = rng.integers(0, vocab_size)
            slot += 1
