"""systemd glue: sd_notify (READY, STATUS, RELOADING, STOPPING, WATCHDOG).

Owns: talking to the service manager. Uses systemd-python's systemd.daemon when it is
installed, else speaks the $NOTIFY_SOCKET datagram protocol directly, so the relay
runs the same on a laptop. Without $NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import importlib
import os
import socket
import time
from typing import Any

_sd_daemon: Any
try:  # systemd-python where installed (it needs libsystemd); the plain socket protocol otherwise
    _sd_daemon = importlib.import_module("systemd.daemon")
except ImportError:
    _sd_daemon = None


def notify(*fields: str) -> bool:
    """Send 'KEY=value' lines to the service manager. Returns whether it was sent."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    message = "\n".join(fields)
    if _sd_daemon is not None:
        return bool(_sd_daemon.notify(message))
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Half the WatchdogSec= period, if systemd asked for pings to this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or (pid and pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 2e6


def monotonic_usec() -> int:
    return int(time.clock_gettime(time.CLOCK_MONOTONIC) * 1e6)
