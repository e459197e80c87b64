"""`telemetry-relay bundle show|export|confirm`: offline bundles, on the relay's side.

Owns: `show`, which decodes a bundle for a security reviewer (what is inside, which policy
made it, what was redacted, which keys signed it, and whether every digest and signature
checks out against this relay's own keys); `export`, which writes what waits for an
online destination into a bundle (export/backlog.py) and records it as exported, not
delivered; `confirm`, which, once the vendor has the bundle, lets the spool count its
entries as delivered. What came from the bundle is printed control-escaped.

`show` and `export` only read the spool and the keys: they run beside a running relay.
`confirm` writes the spool, which has one writer: it refuses while the relay runs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from relay import config
from relay.cli.common import EXIT_FAIL, EXIT_OK, escape_strings, format_bytes, format_utc
from relay.export.signing import KeyStore, SigningKey


def run(args: argparse.Namespace) -> int:
    return _show(args)


def relay_keys(cfg: config.Config) -> list[SigningKey]:
    """This relay's signing keys: the current one and every retired one still on disk."""
    store = KeyStore(config.key_dir(cfg), cfg.signing.rotation_overlap)
    # now=0: list every retired key kept, and delete none (showing changes nothing).
    return [store.current(), *store.retired(now=0.0)]


def _show(args: argparse.Namespace) -> int:
    from relay.export.bundle import open_bundle
    from relay.ingest.bundle_import import check

    keys = relay_keys(config.load_settings(args.config))
    with open_bundle(Path(args.file)) as bundle:
        result = check(bundle, {k.key_id: k.public for k in keys})
    doc = {
        "manifest": result.manifest,
        "checks": {
            "ok": result.ok,
            "manifest_signed_by": result.manifest_key,
            "manifest_problem": str(result.manifest_problem) if result.manifest_problem else None,
            "requests": {c.name: c.problem[1] if c.problem else "ok" for c in result.requests},
            "unlisted": result.unlisted,
        },
    }
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        print("\n".join(_describe(escape_strings(doc))))
    return EXIT_OK if result.ok else EXIT_FAIL


def _describe(doc: dict[str, Any]) -> list[str]:
    m, checks = doc["manifest"], doc["checks"]
    counts = m.get("counts") or {}
    tr = m.get("time_range") or {}
    out = [
        f"bundle {m.get('bundle')}: {m.get('origin')} of destination {m.get('destination')}, "
        f"relay instance {m.get('relay_instance')}, telemetry-relay {m.get('relay_version')}",
        f"  written {_when(m.get('opened'))} to {_when(m.get('closed'))}",
        f"  data from {_when(tr.get('from'))} to {_when(tr.get('to'))}",
        f"  {counts.get('requests', 0)} requests, {format_bytes(float(counts.get('bytes') or 0))} as sent; items: "
        + (", ".join(f"{s} {n}" for s, n in (counts.get("items") or {}).items()) or "none"),
        "  entries (spool seqs): " + ("; ".join(
            f"{s} " + ", ".join(f"{a}-{b}" for a, b in r) for s, r in (m.get("sequences") or {}).items()) or "none"),
        "  policy sha256: " + (", ".join(m.get("policy_sha256") or []) or "none (no policy in force)"),
        "  signed by key ids: " + ", ".join(m.get("key_ids") or []),
        "  redactions: " + ("; ".join(f"{rule}: " + ", ".join(f"{a} {n}" for a, n in acts.items())
                                      for rule, acts in (m.get("redactions") or {}).items()) or "none"),
    ]
    if checks["manifest_problem"]:
        out.append(f"  MANIFEST DOES NOT CHECK OUT: {checks['manifest_problem']}")
    else:
        out.append(f"  manifest signature verifies (key {checks['manifest_signed_by']}, this relay's)")
    out.append("  requests:")
    for r in m.get("requests") or []:
        verdict = checks["requests"].get(r.get("name"), "not checked")
        out.append(f"    {r.get('name')}  {r.get('signal')}  seqs {r.get('sequence')}  {r.get('items')} items  "
                   f"{format_bytes(float(r.get('bytes') or 0))}  {'ok' if verdict == 'ok' else 'PROBLEM: ' + verdict}")
    for name in checks["unlisted"]:
        out.append(f"    {name}  PROBLEM: in the file but not in the manifest")
    out.append("every digest and signature checks out" if checks["ok"] else "PROBLEMS FOUND: see above")
    return out


def _when(ts: Any) -> str:
    return format_utc(float(ts)) if isinstance(ts, int | float) else "-"
