"""Carrying an online destination's backlog out by hand: `bundle export` and `bundle confirm`.

Owns: writing what waits for an HTTPS destination into a bundle (export/bundle.py), with
the requests that destination would have been sent: the same batches, policy, compression,
sequence numbers and signature; and, once the vendor has it, counting its entries as
delivered (confirm). Until the confirm nothing changes in the spool: the destination, back
online, ships the same data as usual, and a later confirm of what it delivered meanwhile
is harmless. A bundle's export is recorded in <state_dir>/bundle-exports/<bundle id>.json
until it is confirmed.

How each reaches the spool, which has one writer (the relay's spool thread):
- export only reads it (spool/inspect.py), in one read transaction: safe beside a running
  relay, which goes on shipping;
- confirm writes the destination's cursors through the spool's own interface (Spool.ack),
  so it needs the relay stopped, and refuses while its status server answers. Run as root,
  it becomes the spool's owner first, so nothing in the spool turns root's.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import shutil
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from relay import config
from relay.export import sequence
from relay.export.bundle import SUFFIX, BundleBuilder, BundleError, manifest_key, open_bundle, target_uri
from relay.export.prepare import prepare_blocking
from relay.export.signing import KeyStore, Signer, SigningKey
from relay.otlp import SIGNALS, Signal
from relay.policy import Policy, existing_secret, load_policy
from relay.spool import Entry
from relay.spool.inspect import backlog

__all__ = ["Confirmed", "ExportError", "Exported", "confirm", "export", "parse_since"]

EXPORTS_DIR = "bundle-exports"


class ExportError(Exception):
    """What was asked cannot be done; nothing was changed."""


@dataclass
class Exported:
    path: Path
    bundle: str
    requests: int = 0
    items: int = 0
    ranges: dict[str, tuple[int, int]] = field(default_factory=dict)
    stopped_at: str | None = None  # why a signal's export ended before its backlog did


def parse_since(text: str) -> float:
    """A Unix time, or an ISO 8601 time (UTC unless it says otherwise)."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ExportError(f"--since: expected a Unix time or an ISO 8601 time, got {text!r}") from None
    return (when if when.tzinfo else when.replace(tzinfo=datetime.UTC)).timestamp()


def _destination(cfg: config.Config, name: str) -> config.DestinationSettings:
    for d in cfg.destinations:
        if d.name == name:
            return d
    raise ExportError(f"no destination named {name!r} in the configuration "
                      f"(there are: {', '.join(d.name for d in cfg.destinations)})")


def _spool_instance(cfg: config.Config) -> str:
    instance = sequence.read_instance(Path(cfg.state_dir) / "spool")
    if instance is None:
        raise ExportError(f"the spool in {cfg.state_dir} has no instance id yet: nothing was ever spooled to ship")
    return instance


def _batches(entries: list[Entry], max_bytes: int) -> list[list[Entry]]:
    """Consecutive entries up to max_bytes each (one entry alone may be larger), as the
    shipper leases them."""
    out: list[list[Entry]] = []
    size = 0
    for e in entries:
        if not out or size + len(e.payload) > max_bytes:
            out.append([])
            size = 0
        out[-1].append(e)
        size += len(e.payload)
    return out


def export(cfg: config.Config, name: str, out: Path, since: float | None = None) -> Exported:
    """Write what waits for destination `name` into a bundle at `out`. Raises ExportError."""
    dest = _destination(cfg, name)
    if dest.kind != "https":
        raise ExportError(f"destination {name} writes bundles itself; export is for an HTTPS destination")
    if not cfg.signing.enabled:
        raise ExportError("signing is disabled (signing.enabled: false): the vendor could not verify a bundle")
    keys = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap).active()
    instance = _spool_instance(cfg)
    # The relay's own hashing secret, so hashed values come out as the relay would send them.
    secret = existing_secret(cfg.state_dir)
    if secret is None:
        raise ExportError(f"no policy secret in {cfg.state_dir}: the relay has not started there yet")
    policy = load_policy(config.policy_file(cfg, dest), secret)  # fail closed: no valid policy, no export
    signer = Signer(keys)
    out.parent.mkdir(parents=True, exist_ok=True)
    builder = BundleBuilder.begin(out.parent, "export", name, instance)
    result = Exported(out, builder.id)
    try:
        for signal in SIGNALS:
            with backlog(cfg.state_dir, signal, name) as waiting:
                entries = [e for e in waiting if since is None or e.created >= since]
            _export_signal(builder, signal, entries, dest, policy, signer, result)
        if not builder.heads and not builder.covered:
            raise ExportError(f"nothing waits for destination {name}" + (" since then" if since else ""))
        closed = builder.close(keys)
        assert closed is not None
        os.replace(closed, out)
    except BaseException:  # an export is all or nothing: leave no part of it behind
        shutil.rmtree(builder.partial, ignore_errors=True)
        (out.parent / f"{builder.id}{SUFFIX}").unlink(missing_ok=True)
        raise
    _record_export(cfg, builder, out)
    return result


def _export_signal(builder: BundleBuilder, signal: Signal, entries: list[Entry], dest: config.DestinationSettings,
                   policy: Policy, signer: Signer, result: Exported) -> None:
    for batch in _batches(entries, dest.max_request_bytes):
        first, last = batch[0].seq, batch[-1].seq
        try:
            prepared = prepare_blocking(signal, [e.payload for e in batch], policy, dest.compression, sign=True)
        except DecodeError:
            # The relay dead-letters such an entry when it ships it; the export stops short of it.
            result.stopped_at = f"{signal}: an entry in {first}-{last} is not valid OTLP; exported up to {first - 1}"
            return
        if prepared.nothing_left:
            builder.cover(signal, first, last)  # the policy let nothing out: stands for them all the same
        else:
            headers = {**prepared.headers(), **sequence.headers(builder.about["relay_instance"], first, last)}
            signer.sign("POST", target_uri(signal), headers)
            items = sum(e.items for e in batch)
            builder.add(signal, target_uri(signal), headers, prepared.wire, first=first, last=last, items=items,
                        created=(batch[0].created, batch[-1].created),
                        redactions=prepared.outcome.counts if prepared.outcome else {})
            result.requests += 1
            result.items += items
        result.ranges[signal] = (result.ranges.get(signal, (first, first))[0], last)


def _exports_dir(cfg: config.Config) -> Path:
    return Path(cfg.state_dir) / EXPORTS_DIR


def _record_export(cfg: config.Config, builder: BundleBuilder, out: Path) -> None:
    """Exported, not delivered: kept until the confirm, for the operator to see."""
    d = _exports_dir(cfg)
    d.mkdir(mode=0o700, exist_ok=True)
    record = {"bundle": builder.id, "file": str(out.resolve()), "exported_at": time.time(), **builder.about,
              "sequences": builder.covered}
    (d / f"{builder.id}.json").write_text(json.dumps(record, indent=1) + "\n")
    owner = Path(cfg.state_dir).stat()
    if os.geteuid() == 0:  # the service user's state directory stays the service user's
        os.chown(d, owner.st_uid, owner.st_gid)
        os.chown(d / f"{builder.id}.json", owner.st_uid, owner.st_gid)


# -- confirm ---------------------------------------------------------------------------------------


@dataclass
class Confirmed:
    bundle: str
    destination: str
    # Per signal: (last seq the bundle stands for, what happened): confirmed, already delivered.
    signals: dict[str, tuple[int, str]] = field(default_factory=dict)


def relay_keys(cfg: config.Config) -> list[SigningKey]:
    """This relay's signing keys: the current one and every retired one still on disk."""
    store = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap)
    # now=0: list every retired key kept, and delete none (reading changes nothing).
    return [store.current(), *store.retired(now=0.0)]


def _relay_running(cfg: config.Config) -> bool:
    try:
        with urllib.request.urlopen(f"http://{cfg.server.listen}/healthz", timeout=2):
            return True
    except OSError:  # refused, or not answering: no relay there
        return False


def _become_spool_owner(cfg: config.Config) -> None:
    st = Path(cfg.state_dir).stat()
    if os.geteuid() == 0 and st.st_uid != 0:
        os.setgroups([])
        os.setgid(st.st_gid)
        os.setuid(st.st_uid)


def confirm(cfg: config.Config, path: Path) -> Confirmed:
    """The vendor has the bundle at `path`: count the entries it stands for as delivered."""
    with open_bundle(path) as bundle:
        try:
            manifest_key(bundle, {k.key_id: k.public for k in relay_keys(cfg)})
        except BundleError as e:
            raise ExportError(f"{path} was not written by this relay, or was changed since: {e}") from None
        m = bundle.manifest
    if m.get("origin") != "export":
        raise ExportError(f"{path} was written by a bundle destination: it was delivered when it was written")
    dest = _destination(cfg, str(m.get("destination")))
    if m.get("relay_instance") != _spool_instance(cfg):
        raise ExportError(f"{path} comes from another spool (instance {m.get('relay_instance')}), not this one")
    if _relay_running(cfg):
        raise ExportError(f"the relay is running (its status server answers at {cfg.server.listen}); a confirm "
                          "writes the spool, which the relay alone writes while it runs: stop it first "
                          "(systemctl stop telemetry-relay), confirm, start it again")
    _become_spool_owner(cfg)
    done = asyncio.run(_acknowledge(cfg, dest.name, m.get("sequences") or {}))
    (_exports_dir(cfg) / f"{m.get('bundle')}.json").unlink(missing_ok=True)
    return Confirmed(str(m.get("bundle")), dest.name, done)


async def _acknowledge(cfg: config.Config, dest: str, sequences: dict[str, Any]) -> dict[str, tuple[int, str]]:
    from relay.selfmetrics import SelfMetrics
    from relay.spool import Spool

    spool = Spool(cfg.state_dir, cfg.spool, [d.name for d in cfg.destinations], SelfMetrics())
    await spool.open()
    done: dict[str, tuple[int, str]] = {}
    try:
        for signal in SIGNALS:
            for first, last in sequences.get(signal) or []:
                cursor = spool.cursor(dest, signal)
                if last <= cursor:
                    done[signal] = (last, "delivered already")
                elif first > cursor + 1:
                    raise ExportError(f"{signal} entries {cursor + 1}-{first - 1}, before this bundle's, are "
                                      "neither delivered nor confirmed: confirm the bundle that holds them first")
                else:
                    # A lease of the last entry alone carries the cursor just after it.
                    lease = await spool.lease(dest, signal, last - 1, 1)
                    if lease is not None and lease.first == last:
                        await spool.ack(dest, lease)
                    done[signal] = (last, "confirmed")
    finally:
        await spool.close()
    return done
