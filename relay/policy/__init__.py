"""The redaction policy: loading and validating policy.yaml, the hashing secret (checked
like every secret file: private to its owner, and a hex key), and the holder that keeps
the last good policy in force across reloads (fail closed: without a valid policy nothing
ships).
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets as pysecrets
import time
from pathlib import Path
from typing import Any

from relay.policy.engine import Outcome, Policy
from relay.policy.schema import PolicyFile
from relay.secrets import SecretError, check_private_file, register
from relay.strict_yaml import SchemaError, load_text

log = logging.getLogger("relay.policy")

__all__ = ["SECRET_FILE", "Outcome", "Policy", "PolicyHolder", "existing_secret", "load_policy", "load_secret"]


SECRET_FILE = "policy-secret"
# Shorter keys could be found from one known value and its token, and then every token
# reversed by trying values; the relay makes 32-byte keys.
_MIN_SECRET_BYTES = 16


def existing_secret(state_dir: str | Path) -> bytes | None:
    """The per-installation HMAC key for hashed values, or None while there is none yet.

    Raises SecretError, naming the file, when group or others can read it (it must be 0600)
    or it does not hold a hex key; OSError when it cannot be read at all. Never creates it:
    the read-only commands call this, and a file they created (as root, say) would be one
    the service user cannot read.
    """
    path = Path(state_dir) / SECRET_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    check_private_file(path, "policy secret file", allow_group=False)
    try:
        value = raw.decode("ascii").strip()
        key = bytes.fromhex(value)
    except ValueError:
        raise SecretError(f"policy secret file {path} does not hold a hex key") from None
    if not value:
        return None
    register(value)
    if len(key) < _MIN_SECRET_BYTES:
        raise SecretError(f"policy secret file {path} holds a key of {len(key)} bytes; it must hold at least "
                          f"{_MIN_SECRET_BYTES} ({2 * _MIN_SECRET_BYTES} hex digits)")
    return key


def load_secret(state_dir: str | Path) -> bytes:
    """The per-installation HMAC key, created (0600) in the state directory when missing.

    Only starting the relay calls this, so the file belongs to the user the service runs as.
    """
    existing = existing_secret(state_dir)
    if existing is not None:
        return existing
    path = Path(state_dir) / SECRET_FILE
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = pysecrets.token_hex(32)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(value + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(path.with_suffix(".tmp"), path)
    register(value)
    return bytes.fromhex(value)


def load_policy(path: str | Path, secret: bytes) -> Policy:
    """Read and compile a policy file. Raises SchemaError naming the file, line and key path."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise SchemaError(str(p), None, "", "policy file not found") from None
    except OSError as e:
        raise SchemaError(str(p), None, "", f"cannot read policy file: {e.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise SchemaError(str(p), None, "", "policy file is not UTF-8") from None
    pf, _ = load_text(text, PolicyFile, str(p))
    return Policy(pf, secret, str(p), hashlib.sha256(raw).hexdigest(), time.time())


class PolicyHolder:
    """The policy in force for one destination, reloaded from its file on demand."""

    def __init__(self, path: str, secret: bytes) -> None:
        self.path = path
        self.secret = secret
        self.current: Policy | None = None
        self.error: str | None = None
        self.error_time: float | None = None
        self._mtime: float | None = None

    def load(self) -> bool:
        """Load the file; on failure keep the last good policy (or none) and record why."""
        try:
            self._mtime = os.stat(self.path).st_mtime
        except OSError:
            self._mtime = None
        try:
            policy = load_policy(self.path, self.secret)
        except SchemaError as e:
            self.error, self.error_time = str(e), time.time()
            if self.current is None:
                log.error("no valid redaction policy, so nothing ships (fail closed): %s", e)
            else:
                log.error("policy reload refused, the previous policy (sha256 %s) stays in force: %s",
                          self.current.sha256[:12], e)
            return False
        if self.current is None or policy.sha256 != self.current.sha256:
            log.info("redaction policy %s loaded (sha256 %s)", self.path, policy.sha256[:12])
        self.current, self.error, self.error_time = policy, None, None
        return True

    def changed_on_disk(self) -> bool:
        try:
            return os.stat(self.path).st_mtime != self._mtime
        except OSError:
            return self._mtime is not None

    def snapshot(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "sha256": self.current.sha256 if self.current else None,
            "loaded_at": self.current.loaded_at if self.current else None,
            "in_force": self.current is not None,
            "last_error": self.error,
            "last_error_time": self.error_time,
        }
