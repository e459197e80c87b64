"""What a connection self-test found, and where it is kept.

Owns: the record of each step (its verdict, what it saw and the fix), the order and names
of the steps, and the result file in the state directory (state_dir/connection-check.json)
that `telemetry-relay check-connection` writes and the running relay shows in /status.
The file holds no secret: everything in it has passed the secret redaction.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from relay.secrets import redact

RESULT_FILE = "connection-check.json"

Verdict = Literal["ok", "warn", "fail", "skipped"]
# The steps after the configuration, in the order they run, and how the output names them.
NETWORK_STEPS = ("dns", "tcp", "proxy", "tls", "http", "clock", "api_key", "signature")
LABELS = {"configuration": "configuration", "dns": "DNS", "tcp": "TCP", "proxy": "proxy", "tls": "TLS",
          "http": "HTTP", "clock": "clock", "api_key": "API key", "signature": "signature",
          "bundle": "bundle directory"}


@dataclass
class Step:
    name: str
    status: Verdict
    detail: str
    fix: str = ""


def skipped_after(failed: str, name: str) -> Step:
    return Step(name, "skipped", f"because the {LABELS[failed]} step failed")


def save_result(state_dir: str | Path, result: dict[str, Any]) -> Path:
    """Write the last result where the running relay reads it; readable by all (it holds no
    secret) and owned like the state directory. Raises OSError."""
    path = Path(state_dir) / RESULT_FILE
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(redact(json.dumps(result, indent=2, sort_keys=True)) + "\n")
    if os.geteuid() == 0:  # run as root: the service user must still be able to replace it
        st = Path(state_dir).stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    os.replace(tmp, path)
    return path


def load_result(state_dir: str | Path) -> dict[str, Any] | None:
    """The last result, None when no self-test ran yet, or a note when the file is unreadable."""
    path = Path(state_dir) / RESULT_FILE
    try:
        with open(path, "rb") as f:
            raw = f.read(1024 * 1024)
    except FileNotFoundError:
        return None
    except OSError as e:
        return {"error": f"cannot read {path}: {e.strerror}"}
    try:
        doc = json.loads(raw)
    except ValueError:
        return {"error": f"{path} is not JSON"}
    return doc if isinstance(doc, dict) else {"error": f"{path} does not hold a result"}


def steps_as_dicts(steps: list[Step]) -> list[dict[str, Any]]:
    return [asdict(s) for s in steps]
