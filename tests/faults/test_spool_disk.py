"""The fault suite, the spool's own disk: a byte cap below the filesystem, ENOSPC, a restart
on a full disk, a vendor returning to a relay whose spool filled the disk, a salvage with
no room to work in, and a spool directory that is a symbolic link. Each on a small tmpfs of
its own (mounting one needs root; CI runs as root), with the same exact accounting as the
rest of the suite (tests/faults/harness.py)."""

from __future__ import annotations

import os
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tests.faults.harness import (
    RESERVE,
    Pusher,
    config,
    dropped_by_reason,
    fill,
    finish,
    needs_root,
    numbered_request,
    peak_rss,
    record,
    tmpfs,
    umount,
)
from tests.procs import CLI, Ingest, Proc, Relay, wait_until


def push_once(relay: Relay) -> int:
    """The answer to one push of one point (of its own metric: not in the accounting)."""
    req = urllib.request.Request(relay.otlp_url + "/v1/metrics", data=numbered_request(0, 1, "fault.probe"),
                                 method="POST", headers={"Content-Type": "application/x-protobuf"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status)
    except urllib.error.HTTPError as e:
        return int(e.code)


def not_writable(relay: Relay) -> dict[str, Any]:
    """/readyz says 503 because of the spool, and /status agrees; returns the spool's status."""
    code, body = relay.readyz()
    assert code == 503 and any("spool is not writable" in r for r in body["reasons"]), body
    spool: dict[str, Any] = relay.status()["spool"]
    assert spool["writable"] is False, spool
    return spool


@needs_root
def test_full_disk_a_byte_cap_below_the_filesystem_evicts_oldest_exactly(tmp_path: Path) -> None:
    state = tmp_path / "tmpfs"
    tmpfs(state, "8m")
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url, state=state)
    cfg["spool"] = {"max_bytes": "2MiB", "when_full": "drop_oldest", "reserve_bytes": RESERVE}
    relay = Relay(tmp_path, cfg)
    relay.start()
    pusher = Pusher(relay.otlp_url, per_request=200, period=0.002).start()
    try:
        wait_until(lambda: relay.metric("relay_points_dropped_total", reason="max_bytes") > 20_000, timeout=120,
                   what="evictions at the cap")
        pusher.stop()
        spool = relay.status()["spool"]
        assert spool["bytes"] <= 2 * 2**20, spool
        ingest.start()
        got = finish(relay, ingest, pusher)
        dropped = dropped_by_reason(relay)
        row = record("full disk (a): max_bytes 2 MiB on an 8 MiB tmpfs", pusher, got, dropped, peak_rss(relay.pid))
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
        umount(state)
    # Every acknowledged point arrived, or was evicted and counted: exactly.
    assert row["lost"] == int(dropped["max_bytes"]), row


@needs_root
def test_full_disk_b_enospc_is_survived_and_recovered(tmp_path: Path) -> None:
    state = tmp_path / "tmpfs"
    tmpfs(state, "6m")
    filler = state / "filler"
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url, state=state)
    cfg["spool"] = {"max_bytes": "64MiB", "reserve_bytes": RESERVE}
    relay = Relay(tmp_path, cfg)
    relay.start()
    filler.write_bytes(b"\0" * (3 * 2**20))
    pusher = Pusher(relay.otlp_url, per_request=200, period=0.002).start()
    try:
        wait_until(lambda: pusher.answers[503] >= 3, timeout=120, what="503s once the disk is full")
        _, body = wait_until(lambda: (r := relay.readyz())[0] == 503 and r, what="readyz to say so")
        assert any("spool is not writable" in r for r in body["reasons"]), body
        assert relay.status()["spool"]["writable"] is False and relay.alive()
        filler.unlink()  # space returns
        wait_until(lambda: relay.status()["spool"]["writable"], timeout=30, what="recovery by itself")
        pusher.stop()
        ingest.start()
        got = finish(relay, ingest, pusher)
        row = record("full disk (b): ENOSPC on a 6 MiB tmpfs, then space returns", pusher, got,
                     dropped_by_reason(relay), peak_rss(relay.pid))
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
        umount(state)
    assert row["unexplained"] == 0, row
    assert "Traceback" not in relay.log()



@needs_root
def test_full_disk_c_restart_on_a_full_disk_keeps_every_acknowledged_point(tmp_path: Path) -> None:
    """A full disk is not damage: the relay restarted on it starts, takes no new data, keeps
    the queue it has, and delivers all of it once space returns."""
    state = tmp_path / "tmpfs"
    tmpfs(state, "6m")
    filler = state / "filler"
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url, state=state)
    cfg["spool"] = {"max_bytes": "64MiB", "reserve_bytes": RESERVE}
    relay = Relay(tmp_path, cfg, name="relay-filling")
    relay.start()
    filler.write_bytes(b"\0" * (3 * 2**20))
    pusher = Pusher(relay.otlp_url, per_request=200, period=0.002).start()
    try:
        wait_until(lambda: pusher.answers[503] >= 3, timeout=120, what="503s once the disk is full")
        pusher.stop()
        rss = peak_rss(relay.pid)
        assert relay.terminate() == 0
        relay = Relay(tmp_path, cfg, name="relay-restarted-full")
        relay.start()  # it must start on the full disk
        spool = wait_until(lambda: not_writable(relay), what="the restarted relay to say it cannot write")
        assert spool["quarantined"] == [], "a full disk is not damage: nothing is moved aside"
        assert relay.destination()["backlog_items"] == len(pusher.acked), "the whole queue is still there"
        assert push_once(relay) == 503
        assert relay.metric("relay_spool_quarantined_total") == 0
        rss = max(rss, peak_rss(relay.pid))
        filler.unlink()  # space returns
        t0 = time.monotonic()
        wait_until(lambda: relay.status()["spool"]["writable"], timeout=30, what="writable again by itself")
        recovery = time.monotonic() - t0
        assert push_once(relay) == 200
        ingest.start()
        got = finish(relay, ingest, pusher)
        row = record("full disk (c): restart on the full disk, then space returns", pusher, got,
                     dropped_by_reason(relay), max(rss, peak_rss(relay.pid)),
                     recovery_seconds=round(recovery, 2))
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
        umount(state)
    assert row["acknowledged"] > 0 and row["lost"] == 0 and row["dropped"] == {}, row
    assert "Traceback" not in relay.log()


@needs_root
def test_full_disk_d_the_vendor_returns_to_a_full_disk_and_the_relay_recovers_by_itself(tmp_path: Path) -> None:
    """The relay's own spool fills the disk while the vendor is down; when the vendor returns
    the deliveries must be recorded and free the disk, and the relay take pushes again."""
    state = tmp_path / "tmpfs"
    tmpfs(state, "6m")
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url, state=state)
    cfg["spool"] = {"max_bytes": "64MiB", "reserve_bytes": RESERVE}
    relay = Relay(tmp_path, cfg)
    relay.start()
    pusher = Pusher(relay.otlp_url, per_request=200, period=0.002).start()
    try:
        wait_until(lambda: pusher.answers[503] >= 3, timeout=120, what="503s once the spool fills the disk")
        wait_until(lambda: not_writable(relay), what="readyz to say so")
        full = relay.status()["spool"]["bytes"]
        accepted = pusher.answers[200]
        ingest.start()  # the vendor returns; the pusher goes on pushing
        t0 = time.monotonic()
        wait_until(lambda: relay.readyz()[0] == 200 and pusher.answers[200] > accepted, timeout=30,
                   what="readyz 200 and pushes accepted again, by itself")
        recovery = time.monotonic() - t0
        pusher.stop()
        got = finish(relay, ingest, pusher)
        row = record("full disk (d): the vendor returns to a disk its spool filled", pusher, got,
                     dropped_by_reason(relay), peak_rss(relay.pid), recovery_seconds=round(recovery, 2))
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
        umount(state)
    assert full > 2**20, "the spool itself filled the disk"
    assert row["lost"] == 0 and row["dropped"] == {}, row
    assert "Traceback" not in relay.log()


@needs_root
def test_a_salvage_with_no_room_is_reported_and_never_forgotten(tmp_path: Path) -> None:
    """Real damage on a full disk: the queue is quarantined, the salvage copy fails, and the
    quarantine is still accounted (status, counter, log), then and after the next start."""
    state = tmp_path / "tmpfs"
    tmpfs(state, "6m")
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url, state=state)
    cfg["spool"] = {"max_bytes": "64MiB", "reserve_bytes": RESERVE}
    relay = Relay(tmp_path, cfg, name="before")
    relay.start()
    pusher = Pusher(relay.otlp_url, per_request=200, period=0.002).start()
    try:
        # Larger than the reserve, which the relay gives up to open its queues on the full disk.
        wait_until(lambda: relay.status()["spool"]["bytes"] >= 3 * 2**20 // 2, timeout=120,
                   what="a spooled backlog of 1.5 MiB")
        pusher.stop()
        assert relay.terminate() == 0
        db = state / "spool" / "metrics" / "cache.db"
        with open(db, "r+b") as f:  # garble the middle of the file
            f.seek(db.stat().st_size // 2)
            f.write(os.urandom(8192))
        fill(state / "filler")
        relay = Relay(tmp_path, cfg, name="damaged-and-full")
        relay.start()  # it must start
        q = wait_until(lambda: relay.status()["spool"]["quarantined"], what="the quarantine report")[0]
        assert q["salvage_error"] and q["recovered_entries"] == 0 and Path(q["path"]).exists(), q
        assert relay.metric("relay_spool_quarantined_total", outcome="salvage_failed") == 1
        assert "the salvage failed" in relay.log()
        assert relay.terminate() == 0
        relay = Relay(tmp_path, cfg, name="next-start")
        relay.start()
        again = relay.status()["spool"]["quarantined"]
        assert [r["path"] for r in again] == [q["path"]], "still listed after the next start"
        assert again[0]["bytes"] > 0
    finally:
        pusher.stop()
        relay.terminate()
        ingest.terminate()
        umount(state)


def test_a_symlinked_spool_directory_is_refused(tmp_path: Path) -> None:
    """The spool holds raw local data: the relay will not follow a link out of state_dir with
    it, nor chmod what the link points to."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    os.chmod(elsewhere, 0o755)
    ingest = Ingest(tmp_path)
    cfg = config(tmp_path, ingest.url)
    Path(cfg["state_dir"]).mkdir(mode=0o700)
    link = Path(cfg["state_dir"]) / "spool"
    link.symlink_to(elsewhere)
    relay = Relay(tmp_path, cfg)
    proc = Proc([*CLI, "run", "--config", str(relay.config_path)], tmp_path / "relay.log")
    proc.start()
    assert proc.p is not None
    assert proc.p.wait(60) == 2
    assert f"{link} is a symbolic link" in proc.log()
    assert elsewhere.stat().st_mode & 0o777 == 0o755 and list(elsewhere.iterdir()) == []
