"""Request signing: RFC 9421 HTTP Message Signatures (ed25519) over an RFC 9530
Content-Digest, and the relay's signing keys.

Owns: the key directory (current key, retired keys kept for an overlap), the key id
(RFC 7638 JWK thumbprint of the public key), the components every signature covers, and
the signer. The vendor's half, the verifier, is relay/ingest/verify.py and checks exactly
what this module signs. Signature bases are built by the http-message-signatures library,
which is checked against the RFC 9421 appendix test vectors in the tests.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import logging
import os
import secrets as pysecrets
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPSignatureKeyResolver,
    algorithms,
)

from relay import secrets

log = logging.getLogger("relay.signing")

TAG = "telemetry-relay"
# What every relay signature covers, and what it covers whenever the request carries it
# (content-encoding when the body is encoded, the policy hash once a policy is in force,
# the spool entries it carries and the spool they come from: export/sequence.py).
# The verifier requires exactly this.
COVERED_COMPONENTS = ("@method", "@target-uri", "content-type", "content-digest")
COVERED_WHEN_PRESENT = ("content-encoding", "x-relay-policy-sha256", "x-relay-sequence", "x-relay-instance")


# -- keys ------------------------------------------------------------------------------------------


def key_id(public_key: Ed25519PublicKey) -> str:
    """RFC 7638 JWK thumbprint (SHA-256, base64url) of an Ed25519 public key (RFC 8037)."""
    x = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": _b64url(x)}
    canonical = json.dumps(jwk, separators=(",", ":"), sort_keys=True).encode()
    return _b64url(hashlib.sha256(canonical).digest())


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


class SigningKeyError(Exception):
    """A key file is missing, unreadable, unsafe or not an Ed25519 key."""


@dataclass
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey = field(repr=False)
    path: Path
    retired_at: float | None = None

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()


def _load_private(path: Path) -> Ed25519PrivateKey:
    try:
        secrets.check_private_file(path, "private key file", allow_group=False)
    except secrets.SecretError as e:
        raise SigningKeyError(str(e)) from None
    data = path.read_bytes()
    # Keep the key material out of every log line and error message.
    text = data.decode("ascii", "replace")
    for line in text.splitlines():
        if line and not line.startswith("-----"):
            secrets.register(line.strip())
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise SigningKeyError(f"private key file {path} is not a readable PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"private key file {path} is not an Ed25519 key")
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    secrets.register(raw.hex())
    secrets.register(base64.b64encode(raw).decode())
    return key


def _write_private(path: Path, key: Ed25519PrivateKey, owner: tuple[int, int] | None) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    if owner is not None and os.geteuid() == 0:
        os.chown(tmp, *owner)
    os.replace(tmp, path)


class KeyStore:
    """<key_dir>/current.pem is the signing key; <key_dir>/retired/<unix time>-<key id>.pem
    are previous keys, still used (as second signatures) until the overlap has passed."""

    def __init__(self, key_dir: str | Path, overlap: float) -> None:
        self.dir = Path(key_dir)
        self.overlap = overlap

    @property
    def current_path(self) -> Path:
        return self.dir / "current.pem"

    def _owner(self) -> tuple[int, int] | None:
        # Files belong to whoever owns the state directory (the service user).
        try:
            st = self.dir.parent.stat()
        except OSError:
            return None
        return st.st_uid, st.st_gid

    def _prepare_dir(self) -> None:
        (self.dir / "retired").mkdir(mode=0o700, parents=True, exist_ok=True)
        owner = self._owner()
        for d in (self.dir, self.dir / "retired"):
            os.chmod(d, 0o700)
            if owner is not None and os.geteuid() == 0:
                os.chown(d, *owner)

    def exists(self) -> bool:
        return self.current_path.exists()

    def init(self) -> SigningKey:
        """Create the signing key if there is none; return the current key."""
        if not self.exists():
            self._prepare_dir()
            _write_private(self.current_path, Ed25519PrivateKey.generate(), self._owner())
        return self.current()

    def ensure(self) -> list[SigningKey]:
        """The keys in force (current first, then retired ones within the overlap).

        Creates the first key when there is none, so a fresh install signs from its first
        request; the operator still has to register that key with the vendor."""
        if not self.exists():
            key = self.init()
            log.warning(
                "created signing key %s in %s; register its public key with the vendor "
                "(telemetry-relay keys show)", key.key_id, self.dir,
            )
        return self.active()

    def current(self) -> SigningKey:
        if not self.exists():
            raise SigningKeyError(f"no signing key in {self.dir} (run: telemetry-relay keys init)")
        key = _load_private(self.current_path)
        return SigningKey(key_id(key.public_key()), key, self.current_path)

    def retired(self, now: float | None = None) -> list[SigningKey]:
        """Retired keys still within the overlap, newest first. Older ones are deleted."""
        now = time.time() if now is None else now
        out = []
        for path in sorted((self.dir / "retired").glob("*.pem"), reverse=True):
            stamp = path.name.split("-", 1)[0]
            retired_at = float(stamp) if stamp.isdigit() else path.stat().st_mtime
            if retired_at + self.overlap < now:
                try:
                    path.unlink()  # past the overlap the vendor no longer needs it: do not keep secrets
                    log.info("deleted retired signing key %s (overlap over)", path.name)
                except OSError as e:
                    log.warning("could not delete expired retired key %s: %s", path, e)
                continue
            key = _load_private(path)
            out.append(SigningKey(key_id(key.public_key()), key, path, retired_at))
        return out

    def rotate(self) -> tuple[SigningKey, SigningKey]:
        """Make a new current key; the old one is retired (kept for the overlap)."""
        old = self.current()
        self._prepare_dir()
        retired = self.dir / "retired" / f"{int(time.time())}-{old.key_id}.pem"
        os.replace(self.current_path, retired)
        _write_private(self.current_path, Ed25519PrivateKey.generate(), self._owner())
        return self.current(), SigningKey(old.key_id, old.private, retired, time.time())

    def active(self) -> list[SigningKey]:
        return [self.current(), *self.retired()]


# -- signing ---------------------------------------------------------------------------------------


@dataclass
class HttpRequestView:
    """The request as the signature library sees it."""

    method: str
    url: str
    headers: MutableMapping[str, str]


class KeyResolver(HTTPSignatureKeyResolver):
    """Keys by key id, as the signature library asks for them (signer: private, verifier: public)."""

    def __init__(self, private: Mapping[str, Ed25519PrivateKey] | None = None,
                 public: Mapping[str, Ed25519PublicKey] | None = None) -> None:
        self.private = dict(private or {})
        self.public = dict(public or {})

    def resolve_private_key(self, key_id: str) -> Ed25519PrivateKey:
        return self.private[key_id]

    def resolve_public_key(self, key_id: str) -> Ed25519PublicKey | None:
        return self.public.get(key_id)


def content_digest(body: bytes) -> str:
    """RFC 9530 Content-Digest field value (sha-256) of the exact bytes sent."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


class Signer:
    def __init__(self, keys: list[SigningKey]) -> None:
        self.keys = keys
        self._signer = HTTPMessageSigner(
            signature_algorithm=algorithms.ED25519,
            key_resolver=KeyResolver(private={k.key_id: k.private for k in keys}),
        )

    @property
    def key_ids(self) -> list[str]:
        return [k.key_id for k in self.keys]

    def sign(self, method: str, url: str, headers: dict[str, str], now: float | None = None,
             nonce: str | None = None) -> None:
        """Add Signature-Input and Signature to headers (which hold Content-Digest already).

        Signed afresh for every attempt: `created` and the nonce must be new, or the
        vendor's replay window would reject a retry. One label per active key, so a
        vendor that knows either the new or the retired key accepts during a rotation."""
        present = {h.lower() for h in headers}
        components = [*COVERED_COMPONENTS, *(c for c in COVERED_WHEN_PRESENT if c in present)]
        msg = HttpRequestView(method, url, headers)
        created = datetime.datetime.fromtimestamp(int(time.time() if now is None else now), tz=datetime.UTC)
        for i, key in enumerate(self.keys):
            self._signer.sign(
                msg, key_id=key.key_id, created=created, nonce=nonce or pysecrets.token_urlsafe(16),
                label="relay" if i == 0 else f"relay-prev{i}", tag=TAG,
                covered_component_ids=components, append_if_signature_exists=i > 0,
                use_existing_digest=True,
            )
