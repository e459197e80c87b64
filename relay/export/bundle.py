"""Offline bundles: the signed requests a relay would have POSTed, kept in a file instead.

Owns: the bundle format (docs/wire-protocol.md, "Bundles", is the contract), building one
durably (`BundleBuilder`), the relay's signature over its manifest, and reading one back
without trusting it (`open_bundle`). The bundle destination (export/bundle_destination.py)
and `telemetry-relay bundle export` build them; `bundle show` and `ingest import` read them.

A closed bundle is one tar file, <bundle id>.bundle, never changed again:
  manifest.json       what is inside (BundleBuilder.manifest); its exact bytes are signed
  manifest.sig        {"signatures": [{"keyid", "alg": "ed25519", "signature": <base64>}]}
  requests/<n>.json   request n as it would have been sent: {"method", "url", "headers":
                      [[name, value], ...]}, and under "relay" what the manifest says of it
  requests/<n>.body   its body, exactly as it would have been sent (compressed)
Each request's @target-uri is bundle://offline.invalid/v1/<signal> (target_uri): signed
for a bundle, it cannot pass for a live request, nor a live one for a bundled one.

While it is being written a bundle is a directory .open-<bundle id>/ beside the closed
ones: bundle.json (who writes it) and <n>.body, <n>.json per request. A request is added
with three fsyncs (its body, its head, the directory; the head's rename commits it), so
once add() returns it survives a crash; resume() takes up what a crash left open.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import os
import secrets
import shutil
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from relay import __version__
from relay.export import sequence
from relay.export.signing import SigningKey
from relay.otlp import SIGNAL_INFO, Signal

__all__ = ["FORMAT", "SUFFIX", "BundleBuilder", "BundleError", "OpenBundle", "manifest_key", "open_bundle",
           "target_uri"]

FORMAT = "telemetry-relay-bundle/1"
SUFFIX = ".bundle"
OPEN_PREFIX = ".open-"
# Reading a bundle someone handed over: no member is read whole beyond this.
MAX_MEMBER_BYTES = 80 * 1024 * 1024


class BundleError(Exception):
    """A bundle cannot be read, or its manifest does not check out; nothing of it is trusted."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def target_uri(signal: Signal) -> str:
    """The @target-uri a bundled request is signed for: a fixed URI with a host (RFC 9421
    wants an absolute one), the reserved .invalid name, so no request can be sent there."""
    return "bundle://offline.invalid" + SIGNAL_INFO[signal].path


def new_bundle_id(destination: str) -> str:
    return f"{destination}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{secrets.token_hex(4)}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, data: bytes) -> None:
    """data in path, fsynced; through a temporary name, so path is whole or absent."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _merge(ranges: list[list[int]], first: int, last: int) -> None:
    """Add first..last to sorted, disjoint ranges, joining those it touches."""
    ranges.append([first, last])
    ranges.sort()
    merged: list[list[int]] = []
    for r in ranges:
        if merged and r[0] <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], r[1])
        else:
            merged.append(list(r))
    ranges[:] = merged


@dataclass
class BundleBuilder:
    """One open bundle. Used from one thread at a time."""

    directory: Path  # where the closed bundle goes
    id: str
    about: dict[str, Any]  # origin, destination, relay instance, opened
    heads: list[dict[str, Any]] = field(default_factory=list)
    size: int = 0  # body bytes so far
    # Seq ranges this bundle stands for, per signal: its requests', and (for an export) the
    # entries the policy redacted to nothing in between.
    covered: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def partial(self) -> Path:
        return self.directory / f"{OPEN_PREFIX}{self.id}"

    @property
    def opened(self) -> float:
        return float(self.about["opened"])

    @classmethod
    def begin(cls, directory: Path, origin: str, destination: str, instance: str) -> BundleBuilder:
        about = {"origin": origin, "destination": destination, "relay_instance": instance, "opened": time.time()}
        b = cls(directory, new_bundle_id(destination), about)
        b.partial.mkdir(mode=0o700, parents=True)
        _write_durably(b.partial / "bundle.json", json.dumps(about).encode())
        _fsync_dir(directory)
        return b

    @classmethod
    def resume(cls, partial: Path) -> BundleBuilder:
        """The bundle a crash left open, with every request it had committed."""
        about = json.loads((partial / "bundle.json").read_bytes())
        b = cls(partial.parent, partial.name.removeprefix(OPEN_PREFIX), about)
        for head_path in sorted(partial.glob("*.json")):
            if head_path.name == "bundle.json":
                continue
            head = json.loads(head_path.read_bytes())
            b.heads.append(head)
            b.size += head["relay"]["bytes"]
            _merge(b.covered.setdefault(head["relay"]["signal"], []), *head["relay"]["sequence"])
        return b

    def add(self, signal: Signal, url: str, headers: Mapping[str, str], wire: bytes, *, first: int, last: int,
            items: int, created: tuple[float, float], redactions: Mapping[tuple[str, str], int]) -> None:
        """Add one request, durably (see the module docstring). Raises OSError; then nothing
        was committed and the same request may be added again."""
        n = len(self.heads) + 1
        head = {
            "method": "POST", "url": url, "headers": [[k, v] for k, v in headers.items()],
            "relay": {
                "signal": signal, "sequence": [first, last], "items": items, "bytes": len(wire),
                "body_sha256": hashlib.sha256(wire).hexdigest(), "data_from": created[0], "data_to": created[1],
                "redactions": [[rule, action, count] for (rule, action), count in sorted(redactions.items())],
            },
        }
        _write_durably(self.partial / f"{n:06d}.body", wire)
        _write_durably(self.partial / f"{n:06d}.json", json.dumps(head).encode())
        _fsync_dir(self.partial)
        self.heads.append(head)
        self.size += len(wire)
        _merge(self.covered.setdefault(signal, []), first, last)

    def cover(self, signal: Signal, first: int, last: int) -> None:
        """Entries this bundle stands for without a request of their own (redacted to nothing)."""
        _merge(self.covered.setdefault(signal, []), first, last)

    def manifest(self, key_ids: Sequence[str], closed: float) -> dict[str, Any]:
        requests: list[dict[str, Any]] = []
        items: dict[str, int] = {}
        redactions: dict[str, dict[str, int]] = {}
        for n, head in enumerate(self.heads, 1):
            r = head["relay"]
            fields = {k.lower(): v for k, v in head["headers"]}
            requests.append({
                "name": f"requests/{n:06d}", "signal": r["signal"], "sequence": sequence.format_range(*r["sequence"]),
                "items": r["items"], "bytes": r["bytes"], "content_digest": fields.get("content-digest"),
                "policy_sha256": fields.get("x-relay-policy-sha256"),
                "head_sha256": hashlib.sha256(_head_bytes(head)).hexdigest(),
                "body_sha256": r["body_sha256"],
            })
            items[r["signal"]] = items.get(r["signal"], 0) + r["items"]
            for rule, action, count in r["redactions"]:
                per_rule = redactions.setdefault(rule, {})
                per_rule[action] = per_rule.get(action, 0) + count
        times = [t for h in self.heads for t in (h["relay"]["data_from"], h["relay"]["data_to"])]
        return {
            "format": FORMAT, "bundle": self.id, **self.about, "closed": closed, "relay_version": __version__,
            "key_ids": list(key_ids),
            "policy_sha256": sorted({r["policy_sha256"] for r in requests if r["policy_sha256"]}),
            "time_range": {"from": min(times, default=None), "to": max(times, default=None)},
            "counts": {"requests": len(requests), "items": items, "bytes": self.size},
            "sequences": self.covered,
            "redactions": redactions,
            "requests": requests,
        }

    def close(self, keys: Sequence[SigningKey]) -> Path | None:
        """Write the closed bundle (manifest signed by `keys`), fsynced, and remove the open
        one. None if it held nothing. Raises OSError; then it stays open, to close again."""
        final = self.directory / f"{self.id}{SUFFIX}"
        if not self.heads and not self.covered:
            shutil.rmtree(self.partial, ignore_errors=True)
            return None
        if not final.exists():  # else a crash came after the rename: only the cleanup is left
            manifest = json.dumps(self.manifest([k.key_id for k in keys], time.time()), indent=1).encode()
            tmp = self.directory / f".{self.id}{SUFFIX}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                with tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tar:
                    _add_member(tar, "manifest.json", manifest)
                    _add_member(tar, "manifest.sig", sign_manifest(manifest, keys))
                    for n, head in enumerate(self.heads, 1):
                        _add_member(tar, f"requests/{n:06d}.json", _head_bytes(head))
                        _add_member(tar, f"requests/{n:06d}.body", (self.partial / f"{n:06d}.body").read_bytes())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
            _fsync_dir(self.directory)
        shutil.rmtree(self.partial)
        return final


def _head_bytes(head: Mapping[str, Any]) -> bytes:
    return json.dumps(head, indent=1).encode()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o600
    tar.addfile(info, io.BytesIO(data))


def open_bundles(directory: Path) -> list[Path]:
    """The bundles a crash left open in a directory, oldest first."""
    return sorted(directory.glob(f"{OPEN_PREFIX}*"))


# -- the manifest's signature ----------------------------------------------------------------------


def sign_manifest(manifest: bytes, keys: Sequence[SigningKey]) -> bytes:
    sigs = [{"keyid": k.key_id, "alg": "ed25519", "signature": base64.b64encode(k.private.sign(manifest)).decode()}
            for k in keys]
    return json.dumps({"signatures": sigs}, indent=1).encode()


def manifest_key(bundle: OpenBundle, trusted: Mapping[str, Ed25519PublicKey]) -> str:
    """The key id whose signature over the manifest verifies: the first one listed that is
    trusted. Raises BundleError: unknown_key, bad_signature."""
    listed = [s for s in bundle.signatures if isinstance(s, dict) and s.get("keyid") in trusted]
    if not listed:
        ids = ", ".join(str(s.get("keyid")) for s in bundle.signatures if isinstance(s, dict)) or "none"
        raise BundleError("unknown_key", f"manifest signed by unregistered key id(s): {ids}")
    sig = listed[0]
    try:
        trusted[sig["keyid"]].verify(base64.b64decode(str(sig.get("signature")), validate=True),
                                     bundle.manifest_bytes)
    except (InvalidSignature, ValueError):
        raise BundleError("bad_signature", f"the manifest's signature by {sig['keyid']} does not verify: "
                                           "the manifest was changed after the relay signed it") from None
    return str(sig["keyid"])


# -- reading ---------------------------------------------------------------------------------------


@dataclass
class OpenBundle:
    """A bundle file open for reading; nothing in it is checked yet but that it parses."""

    path: Path
    manifest_bytes: bytes
    manifest: dict[str, Any]
    signatures: list[Any]
    members: list[str]  # every member name, in order, repeats included
    _tar: tarfile.TarFile = field(repr=False)

    def read(self, name: str) -> bytes | None:
        """A member's bytes, or None if there is none. Of a name that repeats, tar reads the
        last; the import refuses a bundle whose names repeat, so it never matters."""
        try:
            info = self._tar.getmember(name)
        except KeyError:
            return None
        return _read_member(self._tar, info)

    def request_names(self) -> list[str]:
        """The request names (requests/<n>) the file holds, whatever the manifest says."""
        return sorted({m.removesuffix(".json").removesuffix(".body") for m in self.members
                       if m.startswith("requests/")})


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    if not info.isfile():
        raise BundleError("malformed", f"member {info.name!r} is not a regular file")
    if info.size > MAX_MEMBER_BYTES:
        raise BundleError("malformed", f"member {info.name!r} is {info.size} bytes, above {MAX_MEMBER_BYTES}")
    f = tar.extractfile(info)
    assert f is not None
    return f.read()


@contextlib.contextmanager
def open_bundle(path: Path) -> Iterator[OpenBundle]:
    """Open a bundle file for reading. Raises BundleError when it is not one."""
    try:
        tar = tarfile.open(path, mode="r:")  # noqa: SIM115 - closed below, after the caller is done
    except (OSError, tarfile.TarError) as e:
        raise BundleError("malformed", f"{path} is not a readable bundle: {e}") from None
    try:
        try:
            members = tar.getmembers()
            names = [m.name for m in members]
            if "manifest.json" not in names or "manifest.sig" not in names:
                raise BundleError("malformed", f"{path} has no manifest.json and manifest.sig: not a bundle")
            manifest_bytes = _read_member(tar, tar.getmember("manifest.json"))
            manifest = json.loads(manifest_bytes)
            signatures = json.loads(_read_member(tar, tar.getmember("manifest.sig"))).get("signatures")
        except (tarfile.TarError, OSError, ValueError, AttributeError) as e:
            raise BundleError("malformed", f"{path} is not a readable bundle: {e}") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or not isinstance(signatures, list):
            raise BundleError("malformed", f"{path} is not a {FORMAT} bundle")
        yield OpenBundle(path, manifest_bytes, manifest, signatures, names, tar)
    finally:
        tar.close()
