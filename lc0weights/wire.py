"""A protobuf wire-format walker that finds every layer payload in a raw net.

The walk is schema-guided: a field whose number the schema declares as a
message is descended into, a ``Weights.Layer`` field is reported with the byte
span of its ``params`` payload, and everything else (scalars, strings, fields
the schema does not know, fields with an unexpected wire type) is skipped.
Offsets are exact positions in the input, so payloads can be cut out and
spliced back in without re-serialising anything: that is what makes patches
byte-exact for any writer, any field order and unknown fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from google.protobuf.descriptor import FieldDescriptor

from .errors import NetFormatError
from .proto import lc0net_pb2

_LAYER = lc0net_pb2.Weights.Layer.DESCRIPTOR
_VARINT, _FIXED64, _LENGTH, _START, _END, _FIXED32 = 0, 1, 2, 3, 4, 5


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    """Decode one LEB128 varint at ``pos``; return (value, next position)."""
    value = shift = 0
    while True:
        if pos >= end:
            raise NetFormatError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise NetFormatError("varint longer than 10 bytes")


def iter_fields(buf, pos: int, end: int):
    """Yield (field number, wire type, value start, value end, varint value).

    For length-delimited fields start/end bound the payload; for varints the
    decoded value is given. Groups are not used by lc0 nets and are refused.
    """
    while pos < end:
        key, pos = read_varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NetFormatError("field number 0 in protobuf data")
        value = 0
        if wire == _VARINT:
            start = pos
            value, pos = read_varint(buf, pos, end)
        elif wire == _FIXED64:
            start, pos = pos, pos + 8
        elif wire == _FIXED32:
            start, pos = pos, pos + 4
        elif wire == _LENGTH:
            length, start = read_varint(buf, pos, end)
            pos = start + length
        else:
            raise NetFormatError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise NetFormatError("protobuf field runs past the end of its message")
        yield number, wire, start, pos, value


@dataclass
class LayerSpan:
    """Where one ``Weights.Layer`` sits in the raw bytes, and its scalar fields."""

    path: str
    start: int                  # first byte of the Layer message body
    end: int                    # one past its last byte
    params_start: int = -1      # payload span, -1 when the layer has no params
    params_end: int = -1
    min_bits: int = 0           # float32 bits of min_val (0.0 when absent)
    max_bits: int = 0
    encoding: int | None = None  # None when the field is absent (means LINEAR16)
    dims: list[int] = field(default_factory=list)
    cut_length: int = 0         # skeleton walks: length of the payload that was cut out


def _parse_layer(buf, path, start, end) -> LayerSpan:
    span = LayerSpan(path, start, end)
    for number, wire, s, e, value in iter_fields(buf, start, end):
        if number == 1 and wire == _FIXED32:
            span.min_bits = int.from_bytes(buf[s:e], "little")
        elif number == 2 and wire == _FIXED32:
            span.max_bits = int.from_bytes(buf[s:e], "little")
        elif number == 3 and wire == _LENGTH:
            span.params_start, span.params_end = s, e   # last one wins, as in protobuf
        elif number == 4 and wire == _VARINT:
            span.encoding = value
        elif number == 5 and wire == _VARINT:
            span.dims.append(value)
        elif number == 5 and wire == _LENGTH:               # packed, from other writers
            p = s
            while p < e:
                d, p = read_varint(buf, p, e)
                span.dims.append(d)
    return span


_SCHEMA: dict[str, dict[int, tuple]] = {}


def _message_fields(descriptor) -> dict[int, tuple]:
    """field number -> (name, repeated, child descriptor or None for a Layer)."""
    table = _SCHEMA.get(descriptor.full_name)
    if table is None:
        table = {}
        for fd in descriptor.fields:
            if fd.type == FieldDescriptor.TYPE_MESSAGE:
                child = None if fd.message_type.full_name == _LAYER.full_name else fd.message_type
                table[fd.number] = (fd.name, fd.is_repeated, child)
        _SCHEMA[descriptor.full_name] = table
    return table


def _path(prefix: str, name: str, repeated: bool, counters: dict) -> str:
    """A field's path; a repeated field is numbered by its occurrence."""
    name = prefix + name
    if repeated:
        index = counters.get(name, 0)
        counters[name] = index + 1
        name = f"{name}.{index}"
    return name


def _number_duplicates(spans: list[LayerSpan]) -> None:
    """A second occurrence of a singular field (legal; the last wins) gets a ``~N`` suffix."""
    seen: dict[str, int] = {}
    for span in spans:
        n = seen.get(span.path, 0)
        seen[span.path] = n + 1
        if n:
            span.path = f"{span.path}~{n}"


def _walk(buf, descriptor, start, end, prefix, out, counters):
    fields = _message_fields(descriptor)
    for number, wire, s, e, _ in iter_fields(buf, start, end):
        entry = fields.get(number)
        if entry is None or wire != _LENGTH:
            continue
        name, repeated, child = entry
        name = _path(prefix, name, repeated, counters)
        if child is None:
            out.append(_parse_layer(buf, name, s, e))
        else:
            _walk(buf, child, s, e, name + ".", out, counters)


def find_layers(buf) -> list[LayerSpan]:
    """Every ``Weights.Layer`` in a raw ``Net``, in file order, with stable paths.

    Paths follow the schema's field names (``weights.residual.3.conv1.weights``);
    a repeated field is numbered by its occurrence. A second occurrence of the
    same singular field (legal protobuf, the last one wins) gets a ``~N`` suffix
    so that paths stay unique.
    """
    out: list[LayerSpan] = []
    _walk(buf, lc0net_pb2.Net.DESCRIPTOR, 0, len(buf), "", out, {})
    _number_duplicates(out)
    return out


def read_magic(buf) -> int | None:
    """The ``Net.magic`` field of a raw net, or None if absent."""
    magic = None
    for number, wire, s, e, _ in iter_fields(buf, 0, len(buf)):
        if number == 1 and wire == _FIXED32:
            magic = int.from_bytes(buf[s:e], "little")
    return magic


class _FieldBudget:
    """Counts the fields a skeleton walk visits and stops it past ``limit``.

    The walk is pure Python, about a microsecond per field: a skeleton of
    millions of tiny fields would take minutes, so its time is bounded here.
    """

    def __init__(self, limit: int | None):
        self.left = limit

    def spend(self) -> None:
        if self.left is not None:
            self.left -= 1
            if self.left < 0:
                raise NetFormatError("skeleton has more fields than any net")


def find_skeleton_layers(buf, cuts: list[int], max_fields: int | None = None) -> list[LayerSpan]:
    """The layers of a net whose ``params`` payloads were cut out of ``buf``.

    ``cuts`` are the skeleton offsets where payloads were removed (one per
    layer that has params, in file order). Length prefixes in ``buf`` still
    count the removed bytes, so the walk keeps two positions: where it is in
    the skeleton and how much of each message's declared length it has seen.
    Returns every layer, as :func:`find_layers` would for the whole net; a
    layer whose payload was cut has ``params_start`` at its cut and
    ``params_end - params_start`` (and ``cut_length``) the removed length.
    ``max_fields`` bounds the fields visited (a NetFormatError past it).
    """
    out: list[LayerSpan] = []
    cutset = set(cuts)
    budget = _FieldBudget(max_fields)
    end = _walk_skeleton(buf, lc0net_pb2.Net.DESCRIPTOR, 0, len(buf), None, "", out, {}, cutset, budget)
    if end != len(buf):
        raise NetFormatError("skeleton does not end where its fields do")
    _number_duplicates(out)
    return out


def _walk_skeleton(buf, descriptor, pos, limit, declared, prefix, out, counters, cutset, budget):
    """Walk one message; ``declared`` is its length before the cuts (None: to ``limit``).

    Returns the skeleton position where the message ends.
    """
    fields = _message_fields(descriptor) if descriptor is not None else {}
    remaining = declared
    while (pos < limit) if remaining is None else (remaining > 0):
        budget.spend()
        start = pos
        key, pos = read_varint(buf, pos, limit)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise NetFormatError("field number 0 in protobuf data")
        if wire == _VARINT:
            _, pos = read_varint(buf, pos, limit)
        elif wire in (_FIXED64, _FIXED32):
            pos += 8 if wire == _FIXED64 else 4
        elif wire == _LENGTH:
            length, body = read_varint(buf, pos, limit)
            entry = fields.get(number)
            if entry is not None:
                name, repeated, child = entry
                name = _path(prefix, name, repeated, counters)
                if child is None:
                    span = LayerSpan(name, body, body)
                    end = _walk_layer_skeleton(buf, body, limit, length, span, cutset, budget)
                    span.end = end
                    out.append(span)
                else:
                    end = _walk_skeleton(buf, child, body, limit, length, name + ".", out, counters,
                                         cutset, budget)
                consumed = (body - start) + length
                pos = end
            else:
                pos = body + length
                consumed = None
            if remaining is not None:
                remaining -= consumed if consumed is not None else pos - start
            if pos > limit:
                raise NetFormatError("protobuf field runs past the end of its message")
            continue
        else:
            raise NetFormatError(f"unsupported protobuf wire type {wire}")
        if pos > limit:
            raise NetFormatError("protobuf field runs past the end of its message")
        if remaining is not None:
            remaining -= pos - start
    if remaining is not None and remaining != 0:
        raise NetFormatError("skeleton message lengths do not match its cuts")
    return pos


def _walk_layer_skeleton(buf, pos, limit, declared, span: LayerSpan, cutset, budget) -> int:
    """Walk a Layer whose last params payload may be cut; fill ``span``; return its end."""
    remaining = declared
    while remaining > 0:
        budget.spend()
        start = pos
        key, pos = read_varint(buf, pos, limit)
        number, wire = key >> 3, key & 7
        if wire == _LENGTH:
            length, body = read_varint(buf, pos, limit)
            if number == 3 and body in cutset:             # the cut payload
                span.params_start, span.params_end = body, body + length
                span.cut_length = length
                pos = body
            else:
                if body + length > limit:
                    raise NetFormatError("protobuf field runs past the end of its message")
                if number == 5:                             # packed dims
                    p = body
                    while p < body + length:
                        budget.spend()
                        d, p = read_varint(buf, p, body + length)
                        span.dims.append(d)
                pos = body + length
            remaining -= (body - start) + length
        elif wire == _VARINT:
            value, pos = read_varint(buf, pos, limit)
            if number == 4:
                span.encoding = value
            elif number == 5:
                span.dims.append(value)
            remaining -= pos - start
        elif wire in (_FIXED32, _FIXED64):
            pos += 4 if wire == _FIXED32 else 8
            if pos > limit:
                raise NetFormatError("protobuf field runs past the end of its message")
            if number in (1, 2) and wire == _FIXED32:
                bits = int.from_bytes(buf[pos - 4:pos], "little")
                if number == 1:
                    span.min_bits = bits
                else:
                    span.max_bits = bits
            remaining -= pos - start
        else:
            raise NetFormatError(f"unsupported protobuf wire type {wire}")
        if pos > limit:
            raise NetFormatError("protobuf field runs past the end of its message")
    if remaining != 0:
        raise NetFormatError("skeleton layer length does not match its cut")
    return pos
