"""Read a model's graph inputs and metadata from an ``.onnx`` file without onnxruntime.

An ``.onnx`` file is a protobuf ``ModelProto``. The daemon needs two things from it
*before* it opens the onnxruntime session: the custom ``metadata_props`` (to know how
many frames a window has) and the graph input's dimensions (to pin its symbolic ones
with ``SessionOptions.add_free_dimension_override_by_name``), so the session is built
once, already specialised, instead of once to ask and once more with the overrides.

This is a reader of the protobuf wire format for just those fields (``onnx`` is not a
runtime dependency): length-delimited fields that are not needed (nodes, initializer
data) are skipped by their length, never decoded. Anything unexpected is a
:class:`ValueError`; the caller then simply opens the session without overrides and
lets onnxruntime report what is wrong with the file.
"""

from __future__ import annotations

import mmap
from pathlib import Path

# field numbers of onnx.proto (ModelProto, GraphProto, ValueInfoProto, TypeProto, ...)
_MODEL_GRAPH, _MODEL_METADATA = 7, 14
_GRAPH_INITIALIZER, _GRAPH_INPUT, _GRAPH_SPARSE_INITIALIZER = 5, 11, 15
_TENSOR_NAME = 8
_SPARSE_VALUES = 1
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_TYPE_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE, _DIM_PARAM = 1, 2
_ENTRY_KEY, _ENTRY_VALUE = 1, 2


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise ValueError("truncated or malformed varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """``(field, value)`` of one message: an int for varints, ``(start, end)`` for
    length-delimited fields; fixed 32/64-bit fields are skipped."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield field, value
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if pos + length > end:
                raise ValueError("a field runs past the end of its message")
            yield field, (pos, pos + length)
            pos += length
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
    if pos != end:
        raise ValueError("a message runs past its end")


def _text(buf, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8")


def _dims(buf, span: tuple[int, int]) -> list[int | str | None] | None:
    """Dimensions of a ValueInfoProto's tensor type (None: not a tensor with a shape)."""
    for field, value in _fields(buf, *span):
        if field != _VALUE_TYPE:
            continue
        for tfield, tvalue in _fields(buf, *value):
            if tfield != _TYPE_TENSOR:
                continue
            for sfield, svalue in _fields(buf, *tvalue):
                if sfield != _TENSOR_TYPE_SHAPE:
                    continue
                dims: list[int | str | None] = []
                for dfield, dvalue in _fields(buf, *svalue):
                    if dfield != _SHAPE_DIM:
                        continue
                    dim: int | str | None = None
                    for kfield, kvalue in _fields(buf, *dvalue):
                        if kfield == _DIM_VALUE:
                            dim = kvalue
                        elif kfield == _DIM_PARAM:
                            dim = _text(buf, kvalue) or None
                    dims.append(dim)
                return dims
    return None


def _name(buf, span: tuple[int, int], field_no: int) -> str:
    for field, value in _fields(buf, *span):
        if field == field_no and isinstance(value, tuple):
            return _text(buf, value)
    return ""


def read_header(path: str | Path) -> tuple[dict[str, str], dict[str, list[int | str | None]]]:
    """``(metadata_props, inputs)`` of an ``.onnx`` file: the custom metadata as
    strings, and each graph input that is not an initializer with its dimensions
    (an int, a symbolic name, or None for an unknown one), in graph order."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise ValueError("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return _read(buf, size)


def _read(buf, size: int):
    props: dict[str, str] = {}
    inputs: dict[str, list[int | str | None]] = {}
    graphs = 0
    for field, value in _fields(buf, 0, size):
        if field == _MODEL_METADATA:
            entry = dict(_fields(buf, *value))
            if isinstance(entry.get(_ENTRY_KEY), tuple):
                val = entry.get(_ENTRY_VALUE)
                props[_text(buf, entry[_ENTRY_KEY])] = (_text(buf, val)
                                                       if isinstance(val, tuple) else "")
        elif field == _MODEL_GRAPH:
            graphs += 1
            declared: list[tuple[str, list | None]] = []
            initializers: set[str] = set()
            for gfield, gvalue in _fields(buf, *value):
                if gfield == _GRAPH_INPUT:
                    declared.append((_name(buf, gvalue, _VALUE_NAME), _dims(buf, gvalue)))
                elif gfield == _GRAPH_INITIALIZER:
                    initializers.add(_name(buf, gvalue, _TENSOR_NAME))
                elif gfield == _GRAPH_SPARSE_INITIALIZER:
                    for sfield, svalue in _fields(buf, *gvalue):
                        if sfield == _SPARSE_VALUES:
                            initializers.add(_name(buf, svalue, _TENSOR_NAME))
            for name, dims in declared:
                if name not in initializers:
                    inputs[name] = dims
    if graphs != 1:
        raise ValueError(f"{graphs} graphs in the file")
    return props, inputs
