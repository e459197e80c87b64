"""Builds the deb and rpm packages: `python packaging/build.py deb|rpm [--version V]`.

Both carry every Python dependency as wheels under /opt/telemetry-relay/wheels; the
maintainer scripts install them into a private virtualenv (/opt/telemetry-relay/venv) with
`pip --no-index`, so installing needs no network. /etc/telemetry-relay/{relay,policy}.yaml
are conffiles, the unit and its sysusers/tmpfiles files go where systemd looks for them.
The KIP-714 broker plugin (kafka-plugin/, built with Maven) goes to
/usr/share/telemetry-relay/kafka/, for an operator to put on the brokers' classpath.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUILD = ROOT / "build" / "package"
DIST = ROOT / "dist"
DOCS = ["configuration.md", "privacy.md", "reliability.md", "wire-protocol.md", "metrics.md", "install.md",
        "kafka-client-metrics.md"]
PLUGIN = ROOT / "kafka-plugin"
PLUGIN_JAR_NAME = "telemetry-relay-kafka-plugin.jar"
SUMMARY = "On-prem telemetry relay: collects, spools, redacts and ships signed OTLP"
DESCRIPTION = """Collects host, Kafka broker and JVM metrics and OTLP pushed by local
applications, spools everything durably on local disk, applies the customer's
redaction policy as data leaves, and ships compressed, Ed25519-signed OTLP/HTTP
batches to the vendor."""


def version() -> str:
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise SystemExit("no version in pyproject.toml")


def wheels(dest: Path) -> None:
    """The project and all its runtime dependencies, as wheels (built here where needed)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(dest), str(ROOT)],
                   check=True)


def plugin_jar() -> Path:
    """The broker plugin, built from its sources (mvn package: kafka-clients is provided, nothing bundled)."""
    # Maven's output is captured: this script's stdout is the package path alone.
    p = subprocess.run(["mvn", "-B", "-q", "-f", str(PLUGIN / "pom.xml"), "package"], capture_output=True, text=True,
                       timeout=900)
    if p.returncode != 0:
        raise SystemExit(f"mvn could not build the Kafka plugin:\n{p.stdout[-4000:]}{p.stderr[-4000:]}")
    return PLUGIN / "target" / PLUGIN_JAR_NAME


def stage(ver: str) -> Path:
    root = BUILD / "root"
    shutil.rmtree(BUILD, ignore_errors=True)
    wheels(root / "opt/telemetry-relay/wheels")
    (root / "opt/telemetry-relay/bin").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    os.symlink("/opt/telemetry-relay/bin/telemetry-relay", root / "usr/bin/telemetry-relay")
    etc = root / "etc/telemetry-relay"
    etc.mkdir(parents=True)
    shutil.copy(ROOT / "configs/relay.yaml", etc / "relay.yaml")
    shutil.copy(ROOT / "configs/policy.yaml", etc / "policy.yaml")
    for f in etc.iterdir():
        f.chmod(0o640)
    unit = root / "lib/systemd/system"
    unit.mkdir(parents=True)
    shutil.copy(ROOT / "systemd/telemetry-relay.service", unit)
    for kind, name in (("sysusers", "sysusers.d"), ("tmpfiles", "tmpfiles.d")):
        d = root / "usr/lib" / name
        d.mkdir(parents=True)
        shutil.copy(ROOT / f"systemd/telemetry-relay.{kind}", d / "telemetry-relay.conf")
    maps = root / "usr/share/telemetry-relay/mappings"
    maps.mkdir(parents=True)
    for f in sorted((ROOT / "configs/mappings").glob("*.yaml")):
        shutil.copy(f, maps)
    kafka = root / "usr/share/telemetry-relay/kafka"
    kafka.mkdir(parents=True)
    shutil.copy(plugin_jar(), kafka / PLUGIN_JAR_NAME)
    doc = root / "usr/share/doc/telemetry-relay"
    doc.mkdir(parents=True)
    shutil.copy(ROOT / "README.md", doc)
    for name in DOCS:
        if (ROOT / "docs" / name).exists():
            shutil.copy(ROOT / "docs" / name, doc)
    return root


def build_deb(ver: str) -> Path:
    root = stage(ver)
    debian = root / "DEBIAN"
    debian.mkdir()
    size_kb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and not p.is_symlink()) // 1024
    (debian / "control").write_text(
        f"Package: telemetry-relay\nVersion: {ver}\nArchitecture: amd64\nMaintainer: telemetry-relay maintainers "
        f"<telemetry-relay@vendor.example>\nInstalled-Size: {size_kb}\nDepends: python3 (>= 3.11), python3-venv, "
        f"libsystemd0, adduser\nSection: admin\nPriority: optional\nDescription: {SUMMARY}\n"
        + "".join(f" {line}\n" for line in DESCRIPTION.splitlines())
    )
    (debian / "conffiles").write_text("/etc/telemetry-relay/relay.yaml\n/etc/telemetry-relay/policy.yaml\n")
    for script in ("postinst", "prerm", "postrm"):
        shutil.copy(ROOT / "packaging/debian" / script, debian / script)
        (debian / script).chmod(0o755)
    DIST.mkdir(exist_ok=True)
    out = DIST / f"telemetry-relay_{ver}_amd64.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out


def build_rpm(ver: str) -> Path:
    root = stage(ver)
    top = BUILD / "rpmbuild"
    for d in ("BUILD", "RPMS", "SOURCES", "SPECS", "SRPMS", "BUILDROOT"):
        (top / d).mkdir(parents=True, exist_ok=True)
    spec_in = (ROOT / "packaging/rpm/telemetry-relay.spec.in").read_text()
    spec = spec_in.replace("@VERSION@", ver).replace("@STAGED@", str(root)).replace("@SUMMARY@", SUMMARY) \
        .replace("@DESCRIPTION@", DESCRIPTION)
    spec_path = top / "SPECS/telemetry-relay.spec"
    spec_path.write_text(spec)
    subprocess.run(["rpmbuild", "--quiet", "--define", f"_topdir {top}", "-bb", str(spec_path)], check=True)
    (rpm,) = (top / "RPMS/x86_64").glob("telemetry-relay-*.rpm")
    DIST.mkdir(exist_ok=True)
    out = DIST / rpm.name
    shutil.copy(rpm, out)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["deb", "rpm"])
    ap.add_argument("--version", default=version())
    args = ap.parse_args()
    out = build_deb(args.version) if args.kind == "deb" else build_rpm(args.version)
    print(out)


if __name__ == "__main__":
    main()
