"""Request signing and verification: RFC 9421 HTTP Message Signatures (ed25519) over an
RFC 9530 Content-Digest, and the relay's signing keys.

Owns: the key directory (current key, retired keys kept for an overlap), the key id
(RFC 7638 JWK thumbprint of the public key), the covered components, and the
verifier that the reference ingest (and a vendor) applies: single-instance fields,
required coverage, freshness (±window) and digest judged on the signature that
verified, and its nonce checked against a replay store (relay/export/replay.py).
Signature bases are built by the http-message-signatures library, which is checked
against the RFC 9421 appendix test vectors in the tests.
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
from typing import Any

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from http_message_signatures import (
    HTTPMessageSigner,
    HTTPMessageVerifier,
    HTTPSignatureKeyResolver,
    InvalidSignature,
    algorithms,
)

from relay import secrets
from relay.export.replay import MemoryNonces, NonceStore

log = logging.getLogger("relay.signing")

TAG = "telemetry-relay"
# What every relay signature covers, and what it covers whenever the request carries it
# (content-encoding when the body is encoded, the policy hash once a policy is in force).
# The verifier requires exactly this.
COVERED_COMPONENTS = ("@method", "@target-uri", "content-type", "content-digest")
COVERED_WHEN_PRESENT = ("content-encoding", "x-relay-policy-sha256")
# Fields that may appear only once: the signature's own, and every field it covers. A
# repeat would let the checked value and the used value differ.
SINGLE_INSTANCE_FIELDS = frozenset(
    {"signature", "signature-input", *COVERED_WHEN_PRESENT, *(c for c in COVERED_COMPONENTS if c[0] != "@")}
)
DEFAULT_WINDOW = 300.0
MAX_NONCE = 256


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
class Message:
    """The request as the signature library sees it."""

    method: str
    url: str
    headers: MutableMapping[str, str]


class _Keys(HTTPSignatureKeyResolver):
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
            key_resolver=_Keys(private={k.key_id: k.private for k in keys}),
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
        msg = Message(method, url, headers)
        created = datetime.datetime.fromtimestamp(int(time.time() if now is None else now), tz=datetime.UTC)
        for i, key in enumerate(self.keys):
            self._signer.sign(
                msg, key_id=key.key_id, created=created, nonce=nonce or pysecrets.token_urlsafe(16),
                label="relay" if i == 0 else f"relay-prev{i}", tag=TAG,
                covered_component_ids=components, append_if_signature_exists=i > 0,
                use_existing_digest=True,
            )


# -- verifying -------------------------------------------------------------------------------------


class Rejected(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason


def load_trusted_keys(directory: str | Path) -> dict[str, Ed25519PublicKey]:
    """Every *.pem public key in a directory, by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    for path in sorted(Path(directory).glob("*.pem")):
        try:
            key = serialization.load_pem_public_key(path.read_bytes())
        except ValueError:
            raise SigningKeyError(f"{path} is not a PEM public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise SigningKeyError(f"{path} is not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


class _SignatureChecker(HTTPMessageVerifier):
    """The library's verifier, minus its own clock checks: `Verifier` judges freshness on
    the parameters that verified, against its own clock and its window in both directions
    (the library would refuse anything created more than 5 s ahead)."""

    def validate_created_and_expires(self, sig_input: Any, max_age: Any = None) -> None:
        return None


class Verifier:
    """What the vendor checks, in order: no signed or signature field comes twice, a
    signature is present and well formed, its key is registered, it covers the required
    components, it verifies; then, on that verified signature's own parameters and signed
    values: it is fresh (neither too old nor too far ahead), the signed Content-Digest
    matches the body, and its nonce was not seen before. Any failure rejects the request."""

    def __init__(self, trusted: Mapping[str, Ed25519PublicKey], window: float = DEFAULT_WINDOW,
                 nonces: NonceStore | None = None) -> None:
        self.trusted = dict(trusted)
        self.window = window
        self.nonces: NonceStore = nonces if nonces is not None else MemoryNonces(window)
        self._checker = _SignatureChecker(signature_algorithm=algorithms.ED25519, key_resolver=_Keys(public=trusted))

    def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
        """Returns the key id that verified. Raises Rejected(status, reason, message).

        `headers` may hold repeated field lines (an aiohttp request's headers do): every
        line is looked at, so a repeat cannot hide behind first-wins or last-wins."""
        now = time.time() if now is None else now
        fields = _single_fields(headers)
        if "signature" not in fields or "signature-input" not in fields:
            raise Rejected(401, "missing_signature", "request is not signed (no Signature / Signature-Input)")
        label, covered = self._select(fields)
        required = [*COVERED_COMPONENTS, *(c for c in COVERED_WHEN_PRESENT if c in fields)]
        missing = [c for c in required if c not in covered]
        if missing:
            raise Rejected(401, "uncovered_component",
                           f"signature {label!r} does not cover {', '.join(missing)}, which the request carries")
        try:
            (result,) = self._checker.verify(
                Message(method, url, fields), max_age=None, expect_tag=TAG, expect_label=label,
                require_components=required,
            )
        except InvalidSignature as e:
            raise Rejected(401, "bad_signature", f"signature does not verify: {e}") from None
        except (CryptoInvalidSignature, ValueError, KeyError) as e:
            raise Rejected(401, "bad_signature", f"signature does not verify: {e.__class__.__name__}") from None
        # From here on only what the library verified is used: its parameters, its signed values.
        verified = result.parameters
        created, nonce = verified.get("created"), verified.get("nonce")
        if result.label != label or not isinstance(created, int) or not isinstance(nonce, str):
            # Cannot happen while both parse the one field line; refuse rather than trust it.
            raise Rejected(401, "malformed_signature", "the verified signature is not the one selected")
        self._check_fresh(created, verified.get("expires"), now)
        if not _digest_matches(result.covered_components['"content-digest"'], body):
            raise Rejected(400, "bad_digest", "Content-Digest does not match the body")
        # Remembered as long as this signature could still pass the freshness check.
        if not self.nonces.add(nonce, created + self.window, now):
            raise Rejected(401, "replay", "nonce already seen within the replay window")
        return str(verified["keyid"])

    def _select(self, fields: Mapping[str, str]) -> tuple[str, set[str]]:
        """The first tagged signature whose key is registered, with its parameters checked
        for form: its label and the names of the components it covers."""
        try:
            inputs = _sf_dict(fields["signature-input"])
            sigs = _sf_dict(fields["signature"])
        except _RepeatedKey as e:
            raise Rejected(401, "malformed_signature", f"a signature field names the label {e} twice") from None
        except Exception:
            raise Rejected(
                401, "malformed_signature", "Signature or Signature-Input is not a valid structured field"
            ) from None
        candidates = []
        for label, (members, params) in inputs.items():
            if not isinstance(members, list) or label not in sigs or params.get("tag") != TAG:
                continue
            candidates.append((label, members, params))
        if not candidates:
            raise Rejected(401, "malformed_signature", f"no signature with tag {TAG!r} and a matching Signature")
        known = [c for c in candidates if c[2].get("keyid") in self.trusted]
        if not known:
            ids = ", ".join(str(p.get("keyid")) for _, _, p in candidates)
            raise Rejected(401, "unknown_key", f"signed by unregistered key id(s): {ids}")
        label, members, params = known[0]
        # Form only; the values are judged again on what verified.
        if not isinstance(params.get("created"), int) or isinstance(params.get("created"), bool):
            raise Rejected(401, "malformed_signature", "signature has no integer 'created' parameter")
        if params.get("alg") not in (None, "ed25519"):
            raise Rejected(401, "malformed_signature", f"unsupported alg {params.get('alg')!r}")
        nonce = params.get("nonce")
        if not isinstance(nonce, str) or not 0 < len(nonce) <= MAX_NONCE:
            raise Rejected(401, "malformed_signature", f"signature has no nonce (a string of 1 to {MAX_NONCE} chars)")
        covered = {name for name, component_params in members if isinstance(name, str) and not component_params}
        return label, covered

    def _check_fresh(self, created: int, expires: object, now: float) -> None:
        ahead = created - now
        if ahead > self.window:
            raise Rejected(
                401, "clock_skew",
                f"signature created {ahead:.0f}s ahead of the ingest's clock (clock skew); "
                f"at most {self.window:g}s is tolerated",
            )
        if -ahead > self.window:
            raise Rejected(
                401, "expired", f"signature created {-ahead:.0f}s ago, outside the {self.window:g}s window"
            )
        if isinstance(expires, int) and expires < now:
            raise Rejected(401, "expired", f"signature expired {now - expires:.0f}s ago")


def _single_fields(headers: Mapping[str, str]) -> dict[str, str]:
    """Field values by lowercase name. A second line of a single-instance field is refused;
    other repeated fields are combined as RFC 9421 section 2.1 says."""
    fields: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        value = value.strip(" \t")
        if key not in fields:
            fields[key] = value
        elif key in SINGLE_INSTANCE_FIELDS:
            raise Rejected(400, "duplicate_field", f"{name} appears more than once; it must appear once")
        else:
            fields[key] = f"{fields[key]}, {value}"
    return fields


class _RepeatedKey(ValueError):
    """A structured-field dictionary names the same key twice."""


def _refuse_repeat(key: str, context: str) -> None:
    if context == "dictionary":
        raise _RepeatedKey(repr(key))


def _sf_dict(value: str) -> dict[str, Any]:
    """An RFC 8941 Dictionary as {key: (value, params)}. A repeated key raises _RepeatedKey
    (the parser would otherwise let the last one win, silently)."""
    parsed: Any = http_sf.parse(value.encode(), tltype="dictionary", on_duplicate_key=_refuse_repeat)
    return dict(parsed)


def _digest_matches(value: str, body: bytes) -> bool:
    try:
        parsed = _sf_dict(value)
    except Exception:
        return False
    hashers: dict[str, Any] = {"sha-256": hashlib.sha256, "sha-512": hashlib.sha512}
    checked = False
    for alg, (digest, _) in parsed.items():
        if alg in hashers:
            if not isinstance(digest, bytes) or digest != hashers[alg](body).digest():
                return False
            checked = True
    return checked
