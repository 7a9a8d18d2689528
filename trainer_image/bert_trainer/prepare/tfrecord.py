"""``tf.train.Example`` protos in TFRecord frames, for a whole batch, without TensorFlow.

Building Examples through protobuf classes costs tens of microseconds per
instance, more than everything else in ``prepare``. Here one compiled loop
(``compiled``) writes every row's frame: the sizes of all rows first, then
their bytes and CRCs into one buffer.

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

import google_crc32c
import numba
import numpy as np
import numpy.typing as npt
from google_crc32c import _crc32c as google_crc32c_c

from bert_trainer.prepare import compiled

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
_HEADER_SIZE = _HEADER.size
_FOOTER_SIZE = _FOOTER.size
# google-crc32c's C library (hardware CRC instructions where the CPU has them),
# called from the compiled loop: 10x faster here than a table-driven CRC in it.
_crc32c_extend = compiled.c_function(
    google_crc32c_c.__file__,
    "crc32c_extend",
    numba.types.uint32(numba.types.uint32, numba.types.voidptr, numba.types.uintp),
)


def encode_records(features: Mapping[str, Feature]) -> tuple[bytes, Sizes]:
    """Framed TFRecords of one Example per row, back to back, and each frame's size.

    ``features`` maps names to ``(rows, width)`` arrays: float arrays become
    ``float_list`` features, integer arrays (non-negative) ``int64_list`` ones.
    """
    rows = len(next(iter(features.values())))
    if rows == 0:
        return b"", np.zeros(0, np.int64)
    columns: list[npt.NDArray[np.int64]] = []
    column_starts = [0]
    is_float: list[bool] = []
    keys = bytearray()
    key_starts = [0]
    for name, array in features.items():
        if np.issubdtype(array.dtype, np.floating):
            # A float's packed bytes are its little-endian bits.
            columns.append(
                np.ascontiguousarray(array, dtype="<f4").view(np.uint32).astype(np.int64)
            )
            is_float.append(True)
        else:
            if array.size and array.min() < 0:
                raise ValueError(f"{name}: negative int64 features are not supported")
            columns.append(array.astype(np.int64))
            is_float.append(False)
        column_starts.append(column_starts[-1] + array.shape[1])
        key = name.encode()
        keys += bytes([_FIELD_1, *_varint(len(key)), *key, _FIELD_2])
        key_starts.append(len(keys))
    data, sizes = _encode(
        np.concatenate(columns, axis=1),
        np.array(column_starts, np.int64),
        np.array(is_float, np.bool_),
        np.frombuffer(bytes(keys), np.uint8),
        np.array(key_starts, np.int64),
    )
    return data.tobytes(), sizes


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


def _varint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@compiled.inline
def _varint_size(value: int) -> int:
    # Most values (ids of a 30k vocab, positions, masks) take one or two bytes.
    if value < 0x80:
        return 1
    if value < 0x4000:
        return 2
    size = 3
    value >>= 21
    while value:
        value >>= 7
        size += 1
    return size


@compiled.inline
def _put_varint(out: Bytes, position: int, value: int) -> int:
    if value < 0x80:
        out[position] = value
        return position + 1
    if value < 0x4000:
        out[position] = (value & 0x7F) | 0x80
        out[position + 1] = value >> 7
        return position + 2
    while value >= 0x80:
        out[position] = (value & 0x7F) | 0x80
        value >>= 7
        position += 1
    out[position] = value
    return position + 1


@compiled.inline
def _put_fixed(out: Bytes, position: int, value: int, width: int) -> int:
    for k in range(width):
        out[position + k] = (value >> (8 * k)) & 0xFF
    return position + width


@compiled.inline
def _masked_crc(data: Bytes, start: int, end: int) -> int:
    crc = _crc32c_extend(0, data.ctypes.data + start, end - start)
    return int(((crc >> 15) | (crc << 17)) + np.uint32(_MASK_DELTA)) & 0xFFFFFFFF


@compiled.kernel
def _encode(
    values: npt.NDArray[np.int64],
    column_starts: Sizes,
    is_float: Mask,
    keys: Bytes,
    key_starts: Sizes,
) -> tuple[Bytes, Sizes]:
    """Every row's framed Example: sizes first, then the bytes, then both CRCs."""
    rows = values.shape[0]
    features = len(column_starts) - 1
    packed = np.empty((rows, features), np.int64)
    body = np.zeros(rows, np.int64)
    sizes = np.empty(rows, np.int64)
    for r in range(rows):
        for f in range(features):
            size = 4 * (column_starts[f + 1] - column_starts[f])
            if not is_float[f]:
                size = 0
                for c in range(column_starts[f], column_starts[f + 1]):
                    size += _varint_size(values[r, c])
            packed[r, f] = size
            list_size = 1 + _varint_size(size) + size
            feature_size = 1 + _varint_size(list_size) + list_size
            entry_size = key_starts[f + 1] - key_starts[f] + _varint_size(feature_size)
            entry_size += feature_size
            body[r] += 1 + _varint_size(entry_size) + entry_size
        sizes[r] = _HEADER_SIZE + 1 + _varint_size(body[r]) + body[r] + _FOOTER_SIZE
    out = np.empty(sizes.sum(), np.uint8)
    position = 0
    for r in range(rows):
        frame = position
        example_size = 1 + _varint_size(body[r]) + body[r]
        position = _put_fixed(out, position, example_size, 8)
        position = _put_fixed(out, position, _masked_crc(out, frame, frame + 8), 4)
        out[position] = _FIELD_1
        position = _put_varint(out, position + 1, body[r])
        for f in range(features):
            size = packed[r, f]
            list_size = 1 + _varint_size(size) + size
            feature_size = 1 + _varint_size(list_size) + list_size
            entry_size = key_starts[f + 1] - key_starts[f] + _varint_size(feature_size)
            entry_size += feature_size
            out[position] = _FIELD_1
            position = _put_varint(out, position + 1, entry_size)
            for k in range(key_starts[f], key_starts[f + 1]):
                out[position] = keys[k]
                position += 1
            position = _put_varint(out, position, feature_size)
            out[position] = _FLOAT_LIST if is_float[f] else _INT64_LIST
            position = _put_varint(out, position + 1, list_size)
            out[position] = _FIELD_1
            position = _put_varint(out, position + 1, size)
            if is_float[f]:
                for c in range(column_starts[f], column_starts[f + 1]):
                    position = _put_fixed(out, position, values[r, c], 4)
            else:
                for c in range(column_starts[f], column_starts[f + 1]):
                    position = _put_varint(out, position, values[r, c])
        data_crc = _masked_crc(out, frame + _HEADER_SIZE, position)
        position = _put_fixed(out, position, data_crc, 4)
    return out, sizes
