"""The protobuf wire format, walked by hand: fields as byte slices, without a schema.

Owns: splitting one encoded message into its top-level fields (number, the whole field with
its tag, its value) and writing a length-delimited field back, so that a caller can take a
message apart and put it together again as bytes, copying what it does not change; and listing
the fields of an encoded message that its schema does not know, at every depth (what a decode
and re-encode would hide). Anything this walk does not expect (a truncated field, a group,
field number 0) raises Malformed; the caller then hands the bytes to the real protobuf parser,
which decides what they are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

LENGTH_DELIMITED = 2


class Malformed(Exception):
    """Bytes this walk does not take apart (garbage, or an encoding it leaves to protobuf)."""


def fields(view: memoryview, length_delimited: tuple[int, ...] = ()) -> Iterator[tuple[int, memoryview, memoryview]]:
    """(field number, the whole field with its tag, its value) for each field of a message.

    The fields numbered in `length_delimited` must be (messages, strings, bytes): a caller that
    takes those apart cannot read a varint as one, so another wire type there is Malformed."""
    pos, end = 0, len(view)
    while pos < end:
        start = pos
        tag, pos = varint(view, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:  # not a field number: garbage, which the full parser refuses
            raise Malformed()
        if wire == 2:  # LENGTH_DELIMITED, as a literal: this runs once per field
            length, pos = varint(view, pos)
            value_start, pos = pos, pos + length
        elif field in length_delimited:
            raise Malformed()
        elif wire == 0:
            value_start = pos
            _, pos = varint(view, pos)
        elif wire == 1:
            value_start, pos = pos, pos + 8
        elif wire == 5:
            value_start, pos = pos, pos + 4
        else:  # groups, or garbage
            raise Malformed()
        if pos > end:
            raise Malformed()
        yield field, view[start:pos], view[value_start:pos]


def varint(view: memoryview, pos: int) -> tuple[int, int]:
    """The varint at `pos` and the position after it."""
    result = shift = 0
    while True:
        if pos >= len(view) or shift > 63:
            raise Malformed()
        b = view[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def encode_varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def emit(out: list[bytes | memoryview], field: int, content: list[bytes | memoryview]) -> None:
    """Append field `field` (length-delimited) holding the concatenation of `content`."""
    out.append(encode_varint(field << 3 | LENGTH_DELIMITED))
    out.append(encode_varint(sum(len(c) for c in content)))
    out.extend(content)


_FD = FieldDescriptor
# The wire type each field type is encoded with (a repeated number may also come packed, as 2).
_WIRE_TYPES = {
    **dict.fromkeys((_FD.TYPE_INT32, _FD.TYPE_INT64, _FD.TYPE_UINT32, _FD.TYPE_UINT64, _FD.TYPE_SINT32,
                     _FD.TYPE_SINT64, _FD.TYPE_BOOL, _FD.TYPE_ENUM), 0),
    **dict.fromkeys((_FD.TYPE_FIXED64, _FD.TYPE_SFIXED64, _FD.TYPE_DOUBLE), 1),
    **dict.fromkeys((_FD.TYPE_FIXED32, _FD.TYPE_SFIXED32, _FD.TYPE_FLOAT), 5),
    **dict.fromkeys((_FD.TYPE_STRING, _FD.TYPE_BYTES, _FD.TYPE_MESSAGE), LENGTH_DELIMITED),
}


def unknown_fields(descriptor: Any, data: bytes | memoryview, path: str = "") -> list[str]:
    """The fields of `data` that the message `descriptor` does not know (or knows with another
    wire type), at every depth, as paths like `resource_spans[0].scope_spans[0].spans[1]#99`."""
    found: list[str] = []
    seen: dict[int, int] = {}
    for number, whole, value in fields(memoryview(data)):
        wire_type = varint(whole, 0)[0] & 7
        index = seen[number] = seen.get(number, -1) + 1
        f = descriptor.fields_by_number.get(number)
        expected = _WIRE_TYPES.get(f.type) if f is not None else None
        packed = f is not None and f.is_repeated and wire_type == LENGTH_DELIMITED and expected != LENGTH_DELIMITED
        if f is None or (wire_type != expected and not packed):
            found.append(f"{path}#{number}")
        elif f.type == _FD.TYPE_MESSAGE:
            here = f"{path}.{f.name}".lstrip(".") + (f"[{index}]" if f.is_repeated else "")
            found += unknown_fields(f.message_type, value, here)
    return found
