"""The protobuf wire format, walked by hand: fields as byte slices, without a schema.

Owns: splitting one encoded message into its top-level fields (number, the whole field with
its tag, its value) and writing a length-delimited field back, so that a caller can take a
message apart and put it together again as bytes, copying what it does not change. Anything
this walk does not expect (a truncated field, a group, field number 0) raises Malformed; the
caller then hands the bytes to the real protobuf parser, which decides what they are.
"""

from __future__ import annotations

from collections.abc import Iterator

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
