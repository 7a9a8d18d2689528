"""``tf.train.Example`` protos in TFRecord frames, for a whole batch, without TensorFlow.

Building Examples through protobuf classes costs tens of microseconds per
instance, more than everything else in ``prepare``. Here the wire format is
assembled with numpy for all rows at once: every row is a sequence of pieces
(tags, varint lengths, keys, packed values), each piece a ``(rows, width)``
byte matrix with a mask of the bytes a row uses, and one boolean selection
concatenates them. Only the CRCs are computed row by row (in C).

Wire format (proto3; every field length-delimited)::

    Example  { Features features = 1; }
    Features { map<string, Feature> feature = 1; }   // entry { key = 1; value = 2; }
    Feature  { FloatList float_list = 2; Int64List int64_list = 3; }
    *List    { repeated value = 1 [packed = true]; }

TFRecord frame: ``uint64 length, uint32 masked_crc32c(length bytes), data,
uint32 masked_crc32c(data)``, little-endian.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from typing import Any

import google_crc32c
import numpy as np
import numpy.typing as npt

Feature = npt.NDArray[np.int32] | npt.NDArray[np.int64] | npt.NDArray[np.float32]
Bytes = npt.NDArray[np.uint8]
Mask = npt.NDArray[np.bool_]
Sizes = npt.NDArray[np.int64]

_FIELD_1 = 0x0A  # field 1, wire type 2 (length-delimited)
_FIELD_2 = 0x12
_INT64_LIST = 0x1A  # Feature.int64_list: field 3
_FLOAT_LIST = 0x12  # Feature.float_list: field 2
_MASK_DELTA = 0xA282EAD8
_HEADER = struct.Struct("<QI")
_FOOTER = struct.Struct("<I")
_MAX_VARINT_BYTES = 10


def encode_records(features: Mapping[str, Feature]) -> tuple[bytes, Sizes]:
    """Framed TFRecords of one Example per row, back to back, and each frame's size.

    ``features`` maps names to ``(rows, width)`` arrays: float arrays become
    ``float_list`` features, integer arrays (non-negative) ``int64_list`` ones.
    """
    rows = len(next(iter(features.values())))
    if rows == 0:
        return b"", np.zeros(0, np.int64)
    pieces: list[tuple[Bytes, Mask]] = []
    body_size = np.zeros(rows, dtype=np.int64)
    for name, array in features.items():
        key = name.encode()
        payload, payload_mask, packed_size = _payload(array)
        list_size = 1 + _varint_size(packed_size) + packed_size
        feature_size = 1 + _varint_size(list_size) + list_size
        entry_size = 2 + len(_varint(len(key))) + len(key) + _varint_size(feature_size)
        entry_size += feature_size
        body_size += 1 + _varint_size(entry_size) + entry_size
        kind = _FLOAT_LIST if np.issubdtype(array.dtype, np.floating) else _INT64_LIST
        pieces += [
            _constant(bytes([_FIELD_1])),
            _varints(entry_size),
            _constant(bytes([_FIELD_1, *_varint(len(key)), *key, _FIELD_2])),
            _varints(feature_size),
            _constant(bytes([kind])),
            _varints(list_size),
            _constant(bytes([_FIELD_1])),
            _varints(packed_size),
            (payload, payload_mask),
        ]
    example_size = 1 + _varint_size(body_size) + body_size
    crc_slot = (np.zeros((rows, 4), np.uint8), np.ones((1, 4), bool))
    framed = [
        (example_size.astype("<u8").view(np.uint8).reshape(rows, 8), np.ones((1, 8), bool)),
        crc_slot,
        _constant(bytes([_FIELD_1])),
        _varints(body_size),
        *pieces,
        crc_slot,
    ]
    flat, sizes = _concatenate_rows(framed, rows)
    _fill_crcs(flat, sizes, example_size)
    return flat.tobytes(), sizes


def masked_crc32c(data: bytes) -> int:
    crc: int = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame_spans(data: bytes, *, verify: bool = False) -> list[tuple[int, int]]:
    """``(start, end)`` of every frame in a TFRecord file's bytes."""
    spans: list[tuple[int, int]] = []
    position = 0
    while position < len(data):
        if position + _HEADER.size > len(data):
            raise ValueError(f"truncated TFRecord header at byte {position}")
        length, length_crc = _HEADER.unpack_from(data, position)
        end = position + _HEADER.size + length + _FOOTER.size
        if end > len(data):
            raise ValueError(f"truncated TFRecord at byte {position}")
        if verify:
            (data_crc,) = _FOOTER.unpack_from(data, end - _FOOTER.size)
            header_ok = length_crc == masked_crc32c(data[position : position + 8])
            if not header_ok or data_crc != masked_crc32c(
                data[position + _HEADER.size : end - _FOOTER.size]
            ):
                raise ValueError(f"corrupt TFRecord at byte {position}")
        spans.append((position, end))
        position = end
    return spans


def read_records(data: bytes) -> Iterator[bytes]:
    """The records in a TFRecord file's bytes, checksums verified."""
    for start, end in frame_spans(data, verify=True):
        yield data[start + _HEADER.size : end - _FOOTER.size]


def _payload(array: Feature) -> tuple[Bytes, Mask, Sizes]:
    """The packed values of each row: bytes, the mask of bytes used, bytes per row."""
    rows, width = array.shape
    if np.issubdtype(array.dtype, np.floating):
        data = np.ascontiguousarray(array, dtype="<f4").view(np.uint8).reshape(rows, 4 * width)
        return data, np.ones((1, 4 * width), bool), np.full(rows, 4 * width, np.int64)
    if array.size and array.min() < 0:
        raise ValueError("negative int64 features are not supported")
    if not array.size or array.max() < 0x80:
        # One byte per value (masks, segment ids, short positions): the values are the bytes.
        return array.astype(np.uint8), np.ones((1, width), bool), np.full(rows, width, np.int64)
    groups, used = _varint_groups(array.astype(np.int64))
    widest = groups.shape[-1]
    return (
        groups.reshape(rows, width * widest),
        used.reshape(rows, width * widest),
        used.sum(axis=(1, 2)).astype(np.int64),
    )


def _varint_groups(values: npt.NDArray[np.int64]) -> tuple[Bytes, Mask]:
    """Varint bytes of non-negative values, ``(..., widest)``, and the mask of bytes used."""
    largest = int(values.max()) if values.size else 0
    # Narrow integers make numpy's shifts and masks several times faster.
    v: npt.NDArray[Any] = values.astype(np.uint32 if largest < 1 << 32 else np.uint64)
    widest = max(1, (largest.bit_length() + 6) // 7)
    more = [v >= (1 << (7 * k)) for k in range(1, widest)]
    groups = np.empty((*v.shape, widest), dtype=np.uint8)
    for k in range(widest):
        seven = ((v >> (7 * k)) & 0x7F).astype(np.uint8)
        groups[..., k] = seven | (more[k].view(np.uint8) << 7) if k < widest - 1 else seven
    used = np.ones((*v.shape, widest), dtype=bool)
    for k in range(1, widest):
        used[..., k] = more[k - 1]
    return groups, used


def _varints(values: Sizes) -> tuple[Bytes, Mask]:
    return _varint_groups(values)


def _varint_size(values: Sizes) -> Sizes:
    size = np.ones(values.shape, dtype=np.int64)
    largest = int(values.max()) if values.size else 0
    for k in range(1, _MAX_VARINT_BYTES):
        if largest < 1 << (7 * k):
            break
        size += values >= (1 << (7 * k))
    return size


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _constant(data: bytes) -> tuple[Bytes, Mask]:
    return np.frombuffer(data, np.uint8)[None, :], np.ones((1, len(data)), bool)


def _concatenate_rows(pieces: list[tuple[Bytes, Mask]], rows: int) -> tuple[Bytes, Sizes]:
    """Each row's used bytes of every piece, in order; all rows back to back."""
    data = np.concatenate([np.broadcast_to(b, (rows, b.shape[1])) for b, _ in pieces], axis=1)
    used = np.concatenate([np.broadcast_to(m, (rows, m.shape[1])) for _, m in pieces], axis=1)
    # compress() is several times faster than boolean indexing on irregular masks.
    flat = np.compress(used.ravel(), data.ravel())
    return flat, np.count_nonzero(used, axis=1).astype(np.int64)


def _fill_crcs(flat: Bytes, sizes: Sizes, example_size: Sizes) -> None:
    """Write both CRCs of every frame into its (zeroed) slots."""
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    raw = flat.tobytes()
    # Many frames share a length, so its CRC is computed once per distinct length.
    lengths, inverse = np.unique(example_size, return_inverse=True)
    length_crcs = np.array([masked_crc32c(struct.pack("<Q", int(n))) for n in lengths], "<u4")
    data_crcs = np.fromiter(
        (
            masked_crc32c(raw[s + 12 : s + 12 + n])
            for s, n in zip(starts.tolist(), example_size.tolist(), strict=True)
        ),
        dtype="<u4",
        count=len(starts),
    )
    offsets = np.arange(4)
    flat[(starts + 8)[:, None] + offsets] = length_crcs[inverse].view(np.uint8).reshape(-1, 4)
    flat[(starts + sizes - 4)[:, None] + offsets] = data_crcs.view(np.uint8).reshape(-1, 4)
