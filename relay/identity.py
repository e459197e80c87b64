"""Who is sending: the host and relay instance identity shared by every source.

Owns: host.id (the machine-id), a stable service.instance.id kept in the state
directory, and the base resource attributes every local source attaches.
"""

from __future__ import annotations

import socket
import uuid
from pathlib import Path

from relay import __version__


def machine_id() -> str:
    for p in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        try:
            value = Path(p).read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return ""


def instance_id(state_dir: str | Path, configured: str | None) -> str:
    """The configured id, else a UUID created once and kept in the state directory."""
    if configured:
        return configured
    path = Path(state_dir) / "instance-id"
    try:
        value = path.read_text().strip()
        if value:
            return value
    except OSError:
        pass
    value = str(uuid.uuid4())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(value + "\n")
    tmp.replace(path)
    return value


def base_resource(instance: str) -> dict[str, str]:
    res = {
        "host.name": socket.gethostname(),
        "os.type": "linux",
        "service.name": "telemetry-relay",
        "service.version": __version__,
        "service.instance.id": instance,
    }
    mid = machine_id()
    if mid:
        res["host.id"] = mid
    return res
