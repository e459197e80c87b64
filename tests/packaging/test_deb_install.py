"""The deb in a fresh Debian 12 root made with debootstrap: offline install, the relay started
with the unit's exact ExecStart as the service user and shipping to an ingest on the host,
an upgrade that keeps the edited policy and the spooled data, then purge.

Slow (a debootstrap on the first run, cached as a tarball afterwards): `make test-packaging`."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Ingest, Proc, free_port, http_get, wait_until

ROOT = Path(__file__).parents[2]
CACHE = Path(os.environ.get("TELEMETRY_RELAY_TEST_CACHE", "/var/cache/telemetry-relay-tests"))
BASE_TAR = CACHE / "bookworm-base.tar"
INCLUDE = "python3,python3-venv,libsystemd0,adduser,ca-certificates,procps"

pytestmark = pytest.mark.skipif(
    os.environ.get("TELEMETRY_RELAY_PACKAGING_TEST") != "1" or os.geteuid() != 0 or not shutil.which("debootstrap"),
    reason="slow: run with make test-packaging (root, debootstrap)",
)


def sh(*args: str, timeout: float = 900, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=True, text=True, capture_output=True, timeout=timeout, **kw)  # type: ignore[call-overload, no-any-return]


def base_root() -> Path:
    """A Debian 12 root (cached as a tarball between runs)."""
    if not BASE_TAR.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        work = CACHE / "bookworm"
        shutil.rmtree(work, ignore_errors=True)
        sh("debootstrap", "--variant=minbase", f"--include={INCLUDE}", "bookworm", str(work),
           "http://deb.debian.org/debian", timeout=1800)
        with tarfile.open(BASE_TAR, "w") as tar:
            tar.add(work, arcname=".")
        shutil.rmtree(work)
    return BASE_TAR


@pytest.fixture
def chroot(tmp_path: Path) -> Iterator[Path]:
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(base_root()) as tar:
        tar.extractall(root)
    sh("mount", "-t", "proc", "proc", str(root / "proc"))
    try:
        yield root
    finally:
        subprocess.run(["umount", "-l", str(root / "proc")], check=False)


def build_deb(version: str) -> Path:
    out = sh(sys.executable, str(ROOT / "packaging" / "build.py"), "deb", "--version", version)
    return Path(out.stdout.strip().splitlines()[-1])


def in_root(root: Path, *args: str, offline: bool = True) -> subprocess.CompletedProcess[str]:
    # unshare -n: the install step has no network at all, as on an air-gapped host.
    prefix = ["unshare", "-n"] if offline else []
    return sh(*prefix, "chroot", str(root), *args)


def exec_start() -> list[str]:
    unit = (ROOT / "systemd" / "telemetry-relay.service").read_text()
    return re.search(r"^ExecStart=(.*)$", unit, re.M).group(1).split()  # type: ignore[union-attr]


def test_offline_install_run_upgrade_and_purge(chroot: Path, tmp_path: Path) -> None:
    root = chroot
    deb1 = build_deb("0.1.0")
    shutil.copy(deb1, root / "tmp" / deb1.name)
    in_root(root, "dpkg", "-i", f"/tmp/{deb1.name}")
    assert (root / "opt/telemetry-relay/venv/bin/telemetry-relay").exists()
    assert in_root(root, "getent", "passwd", "telemetry-relay").stdout.startswith("telemetry-relay:")
    assert (root / "var/lib/telemetry-relay").stat().st_mode & 0o777 == 0o700
    # The KIP-714 broker plugin, for the brokers' classpath (docs/kafka-client-metrics.md).
    assert (root / "usr/share/telemetry-relay/kafka/telemetry-relay-kafka-plugin.jar").stat().st_size > 10_000

    # Point the installed config at an ingest on the host, as an operator would edit it.
    ingest = Ingest(tmp_path)
    ingest.start()
    status, otlp = free_port(), free_port()
    cfg = root / "etc/telemetry-relay/relay.yaml"
    text = cfg.read_text().replace("https://otlp.vendor.example", ingest.url)
    text = text.replace('otlp: {listen: "127.0.0.1:4318"}', f'otlp: {{listen: "127.0.0.1:{otlp}"}}')
    cfg.write_text(text + f"server:\n  listen: 127.0.0.1:{status}\n")
    policy = root / "etc/telemetry-relay/policy.yaml"
    policy.write_text(policy.read_text() + "# edited by the operator\n")

    def start_relay(name: str) -> Proc:
        relay = Proc(["chroot", "--userspec=telemetry-relay:telemetry-relay", str(root), *exec_start()],
                     tmp_path / f"{name}.log")
        relay.start()
        wait_until(lambda: http_get(f"http://127.0.0.1:{status}/readyz")[0] == 200, timeout=60,
                   what=f"/readyz inside the Debian root; log:\n{relay.log()}")
        return relay

    relay = start_relay("relay1")
    try:
        wait_until(lambda: ingest.requests(), timeout=60, what="data at the host's ingest")
        ingest.terminate()  # now let a backlog build in the spool, to carry across the upgrade
        wait_until(lambda: int(re.search(rb'"entries": (\d+)', http_get(f"http://127.0.0.1:{status}/status")[1])
                               .group(1)) >= 2, timeout=60, what="a spooled backlog")  # type: ignore[union-attr]
    finally:
        relay.terminate()
    spool_before = sorted(p.name for p in (root / "var/lib/telemetry-relay/spool/metrics").iterdir())

    deb2 = build_deb("0.1.1")
    shutil.copy(deb2, root / "tmp" / deb2.name)
    in_root(root, "dpkg", "-i", f"/tmp/{deb2.name}")
    assert "0.1.1" in in_root(root, "dpkg-query", "-W", "telemetry-relay").stdout
    assert policy.read_text().endswith("# edited by the operator\n"), "the edited conffile survived"
    assert sorted(p.name for p in (root / "var/lib/telemetry-relay/spool/metrics").iterdir()) == spool_before

    ingest.start()
    relay = start_relay("relay2")
    try:
        n = len(ingest.requests())
        wait_until(lambda: len(ingest.requests()) > n + 1, timeout=60, what="the backlog after the upgrade")
    finally:
        relay.terminate()
        ingest.terminate()

    in_root(root, "dpkg", "--purge", "telemetry-relay")
    for gone in ("opt/telemetry-relay", "var/lib/telemetry-relay", "etc/telemetry-relay"):
        assert not (root / gone).exists(), gone
