"""The rpm, built by packaging/build.py: installed into a scratch root with `rpm --root`, its
file list, conffile flags, scriptlets and permissions checked, and rpmlint run."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]
pytestmark = pytest.mark.skipif(not (shutil.which("rpmbuild") and shutil.which("rpmlint")),
                                reason="make test installs Debian's rpm and rpmlint")


@pytest.fixture(scope="module")
def rpm_file() -> Path:
    out = subprocess.run([sys.executable, str(ROOT / "packaging" / "build.py"), "rpm"], capture_output=True,
                         text=True, check=True, timeout=900)
    return Path(out.stdout.strip().splitlines()[-1])


def q(*args: str) -> str:
    return subprocess.run(["rpm", *args], capture_output=True, text=True, check=True, timeout=60).stdout


def test_rpm_contents_conffiles_scriptlets_and_permissions(rpm_file: Path, tmp_path: Path) -> None:
    files = set(q("-qpl", str(rpm_file)).split())
    for f in ("/usr/bin/telemetry-relay", "/etc/telemetry-relay/relay.yaml", "/etc/telemetry-relay/policy.yaml",
              "/lib/systemd/system/telemetry-relay.service", "/usr/lib/sysusers.d/telemetry-relay.conf",
              "/usr/lib/tmpfiles.d/telemetry-relay.conf", "/usr/share/telemetry-relay/mappings/kafka.yaml",
              "/usr/share/doc/telemetry-relay/privacy.md",
              "/usr/share/telemetry-relay/kafka/telemetry-relay-kafka-plugin.jar",
              "/usr/share/doc/telemetry-relay/kafka-client-metrics.md"):
        assert f in files, f
    wheels = [f for f in files if f.startswith("/opt/telemetry-relay/wheels/")]
    assert any("telemetry_relay-" in w for w in wheels) and any("aiohttp-" in w for w in wheels)
    assert sorted(q("-qpc", str(rpm_file)).split()) == ["/etc/telemetry-relay/policy.yaml",
                                                      "/etc/telemetry-relay/relay.yaml"]
    scripts = q("-qp", "--scripts", str(rpm_file))
    assert "--no-index" in scripts and "python3.11 -m venv" in scripts and "systemd-sysusers" in scripts
    # Files only (the scriptlets need the target's python3.11): a scratch root is enough to look.
    subprocess.run(["rpm", "--root", str(tmp_path), "--nodeps", "--noscripts", "-i", str(rpm_file)], check=True,
                   capture_output=True, timeout=300)
    assert (tmp_path / "etc/telemetry-relay").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "etc/telemetry-relay/relay.yaml").stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "lib/systemd/system/telemetry-relay.service").read_text() == \
        (ROOT / "systemd" / "telemetry-relay.service").read_text()
    verify = subprocess.run(["rpm", "--root", str(tmp_path), "-V", "--nodeps", "telemetry-relay"], capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_rpmlint_passes_with_the_documented_exceptions(rpm_file: Path) -> None:
    p = subprocess.run(["rpmlint", "-r", str(ROOT / "packaging/rpm/rpmlintrc"), str(rpm_file)], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, p.stdout
    assert "0 errors, 0 warnings" in p.stdout
