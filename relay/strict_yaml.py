"""Strict YAML -> typed dataclass loading, shared by the config and the policy file.

Owns: turning a YAML document into frozen dataclasses, rejecting unknown keys and
wrong types with an error that names the file, the line and the key path. Callers
describe their settings as dataclasses; field types drive validation.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, NewType, TypeVar, Union, get_args, get_origin, get_type_hints
from urllib.parse import urlsplit

import yaml

Duration = NewType("Duration", float)
"""Seconds; written as a number or '500ms', '10s', '5m', '2h', '7d'."""
ByteSize = NewType("ByteSize", int)
"""Bytes; written as a number or '512MiB', '4MB', '16KiB'."""
HttpUrl = NewType("HttpUrl", str)
"""An absolute http:// or https:// URL with a host."""
HostPort = NewType("HostPort", str)
"""'host:port', for listeners."""

T = TypeVar("T")


class SchemaError(Exception):
    """A settings file is invalid. str() gives 'file:line: key.path: message'."""

    def __init__(self, file: str, line: int | None, path: str, message: str) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.message = message
        where = f"{file}:{line}" if line else file
        key = f" {path}:" if path else ""
        super().__init__(f"{where}:{key} {message}")


_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, None: 1.0}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$")
_SIZE_UNITS = {
    None: 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3,
    "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
}


def parse_duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("expected a duration like '10s', got a boolean")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    m = _DURATION_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a duration like '500ms', '10s', '5m', '7d', got {value!r}")
    return float(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected a size like '512MiB', got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    m = _SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"expected a size like '4MiB' or '512MiB', got {value!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2)])


def parse_http_url(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected a URL string, got {type(value).__name__}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    try:
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as e:
        raise ValueError(f"bad port in URL {value!r}") from e
    return value.rstrip("/")


def parse_host_port(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected 'host:port', got {type(value).__name__}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected 'host:port' with a port from 0 to 65535, got {value!r}")
    return value


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


_SCALAR_PARSERS: dict[Any, Any] = {
    Duration: parse_duration,
    ByteSize: parse_size,
    HttpUrl: parse_http_url,
    HostPort: parse_host_port,
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps node marks; we construct values ourselves."""


def compose(text: str, file: str) -> yaml.Node | None:
    try:
        return yaml.compose(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise SchemaError(file, line, "", f"invalid YAML: {problem}") from None


def load_file(path: str | Path, cls: type[T]) -> tuple[T, dict[str, int]]:
    """Read and validate one YAML file into `cls`. Raises SchemaError.

    Also returns the line of every key path, for checks made after loading."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SchemaError(str(p), None, "", "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SchemaError(str(p), None, "", f"cannot read file: {e.__class__.__name__}: {e}") from None
    return load_text(text, cls, str(p))


def load_text(text: str, cls: type[T], file: str = "<string>") -> tuple[T, dict[str, int]]:
    node = compose(text, file)
    if node is None:
        node = yaml.MappingNode("tag:yaml.org,2002:map", [])
    conv = _Converter(file)
    return conv.convert(node, cls, ""), conv.lines


class _Converter:
    def __init__(self, file: str) -> None:
        self.file = file
        self._constructor = yaml.SafeLoader("")
        self.lines: dict[str, int] = {}

    def fail(self, node: yaml.Node, path: str, message: str) -> SchemaError:
        # An empty file (or only comments) has no node of its own, so no line to name.
        line = node.start_mark.line + 1 if node.start_mark is not None else None
        return SchemaError(self.file, line, path, message)

    def scalar(self, node: yaml.Node, path: str) -> Any:
        if not isinstance(node, yaml.ScalarNode):
            kind = "a mapping" if isinstance(node, yaml.MappingNode) else "a list"
            raise self.fail(node, path, f"expected a single value, got {kind}")
        try:
            return self._constructor.construct_object(node, deep=True)
        except yaml.YAMLError as e:
            raise self.fail(node, path, f"bad value: {e}") from None

    def convert(self, node: yaml.Node, tp: Any, path: str) -> Any:
        origin = get_origin(tp)
        if origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            is_null = isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"
            if is_null and type(None) in get_args(tp):
                return None
            return self.convert(node, args[0], path)
        if dataclasses.is_dataclass(tp):
            return self.dataclass(node, tp, path)
        if origin is list:
            if not isinstance(node, yaml.SequenceNode):
                raise self.fail(node, path, "expected a list")
            return self.sequence(node, get_args(tp)[0], path)
        if origin is tuple:
            if not isinstance(node, yaml.SequenceNode):
                raise self.fail(node, path, "expected a list")
            return self.sequence(node, get_args(tp)[0], path)
        if origin is dict:
            if not isinstance(node, yaml.MappingNode):
                raise self.fail(node, path, "expected a mapping")
            _, val_tp = get_args(tp)
            out = {}
            for k, v in node.value:
                key = self.scalar(k, path)
                if not isinstance(key, str):
                    raise self.fail(k, path, f"keys must be strings, got {key!r}")
                out[key] = self.convert(v, val_tp, f"{path}.{key}" if path else key)
            return out
        if origin is Literal:
            value = self.scalar(node, path)
            allowed = get_args(tp)
            if value not in allowed:
                choices = ", ".join(repr(a) for a in allowed)
                raise self.fail(node, path, f"expected one of {choices}, got {value!r}")
            return value
        value = self.scalar(node, path)
        if tp in _SCALAR_PARSERS:
            try:
                return _SCALAR_PARSERS[tp](value)
            except ValueError as e:
                raise self.fail(node, path, str(e)) from None
        if tp is bool:
            if not isinstance(value, bool):
                raise self.fail(node, path, f"expected true or false, got {value!r}")
            return value
        if tp is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise self.fail(node, path, f"expected a whole number, got {value!r}")
            return value
        if tp is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise self.fail(node, path, f"expected a number, got {value!r}")
            return float(value)
        if tp is str:
            if isinstance(value, bool) or value is None or isinstance(value, list | dict):
                raise self.fail(node, path, f"expected a string, got {value!r}")
            return str(value)
        raise TypeError(f"schema: unsupported field type {tp!r} at {path}")

    def sequence(self, node: yaml.SequenceNode, item_tp: Any, path: str) -> tuple[Any, ...]:
        items = []
        for i, n in enumerate(node.value):
            self.lines[f"{path}[{i}]"] = n.start_mark.line + 1
            items.append(self.convert(n, item_tp, f"{path}[{i}]"))
        return tuple(items)

    def dataclass(self, node: yaml.Node, cls: Any, path: str) -> Any:
        if isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null":
            node = yaml.MappingNode("tag:yaml.org,2002:map", [], node.start_mark, node.end_mark)
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, path, "expected a mapping of settings")
        hints = get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = self.scalar(key_node, path)
            sub = f"{path}.{key}" if path else str(key)
            if not isinstance(key, str) or key not in fields:
                known = ", ".join(sorted(fields))
                raise self.fail(key_node, sub, f"unknown key (known keys here: {known})")
            if key in kwargs:
                raise self.fail(key_node, sub, "key given twice")
            self.lines[sub] = key_node.start_mark.line + 1
            kwargs[key] = self.convert(value_node, hints[key], sub)
        for name, f in fields.items():
            missing = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if name not in kwargs and missing:
                sub = f"{path}.{name}" if path else name
                raise self.fail(node, sub, "required key is missing")
        try:
            obj = cls(**kwargs)
        except ValueError as e:
            raise self.fail(node, path, str(e)) from None
        validate = getattr(obj, "validate", None)
        if validate is not None:
            try:
                validate()
            except ValueError as e:
                raise self.fail(node, path, str(e)) from None
        return obj


def field_docs(cls: type) -> list[tuple[str, str, Any]]:
    """(path, type name, default) for every leaf setting; used to check the docs."""
    out: list[tuple[str, str, Any]] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None
        )
        if dataclasses.is_dataclass(tp):
            for sub, tname, d in field_docs(tp):  # type: ignore[arg-type]
                out.append((f"{f.name}.{sub}", tname, d))
        elif get_origin(tp) in (list, tuple) and dataclasses.is_dataclass(get_args(tp)[0]):
            for sub, tname, d in field_docs(get_args(tp)[0]):
                out.append((f"{f.name}[].{sub}", tname, d))
        else:
            out.append((f.name, getattr(tp, "__name__", str(tp)), default))
    return out
