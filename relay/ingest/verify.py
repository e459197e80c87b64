"""The vendor's check of a relay request: RFC 9421 signature, RFC 9530 digest, replay.

Owns: the verifier the reference ingest (and a vendor) applies, in the order
docs/wire-protocol.md gives: single-instance fields, a tagged signature by a registered
key, required coverage, freshness (±window, both ways) and the digest judged on the very
signature that verified, and its nonce checked against a replay store (relay/ingest/replay.py);
for a request kept in a bundle, the same checks but freshness and the nonce (verify_archived).
What it requires is what relay/export/signing.py signs.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import http_sf
from cryptography.exceptions import InvalidSignature as CryptoInvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from http_message_signatures import HTTPMessageVerifier, InvalidSignature, algorithms

from relay.export.signing import (
    COVERED_COMPONENTS,
    COVERED_WHEN_PRESENT,
    TAG,
    HttpRequestView,
    KeyResolver,
    SigningKeyError,
    key_id,
)
from relay.ingest.replay import MemoryNonces, NonceStore

# Fields that may appear only once: the signature's own, and every field it covers. A
# repeat would let the checked value and the used value differ.
SINGLE_INSTANCE_FIELDS = frozenset(
    {"signature", "signature-input", *COVERED_WHEN_PRESENT, *(c for c in COVERED_COMPONENTS if c[0] != "@")}
)
DEFAULT_WINDOW = 300.0
MAX_NONCE = 256


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
        self._checker = _SignatureChecker(signature_algorithm=algorithms.ED25519,
                                          key_resolver=KeyResolver(public=trusted))

    def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes, now: float | None = None) -> str:
        """Returns the key id that verified. Raises Rejected(status, reason, message).

        `headers` may hold repeated field lines (an aiohttp request's headers do): every
        line is looked at, so a repeat cannot hide behind first-wins or last-wins."""
        now = time.time() if now is None else now
        result = self._verified(method, url, headers)
        # From here on only what the library verified is used: its parameters, its signed values.
        verified = result.parameters
        created, nonce = verified["created"], verified["nonce"]
        self._check_fresh(created, verified.get("expires"), now)
        _check_digest(result.covered_components, body)
        # Remembered as long as this signature could still pass the freshness check.
        if not self.nonces.add(nonce, created + self.window, now):
            raise Rejected(401, "replay", "nonce already seen within the replay window")
        return str(verified["keyid"])

    def verify_archived(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> str:
        """verify() for a request kept in a bundle, imported long after it was signed: the
        same checks but freshness and the nonce. What stands in for them (a signed manifest,
        the (instance, signal, sequence) check against what was stored) is the importer's
        (relay/ingest/bundle_import.py; docs/wire-protocol.md, "Bundles")."""
        result = self._verified(method, url, headers)
        _check_digest(result.covered_components, body)
        return str(result.parameters["keyid"])

    def _verified(self, method: str, url: str, headers: Mapping[str, str]) -> Any:
        """The one signature that verified, after every check of form and coverage."""
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
                HttpRequestView(method, url, fields), max_age=None, expect_tag=TAG, expect_label=label,
                require_components=required,
            )
        except InvalidSignature as e:
            raise Rejected(401, "bad_signature", f"signature does not verify: {e}") from None
        except (CryptoInvalidSignature, ValueError, KeyError) as e:
            raise Rejected(401, "bad_signature", f"signature does not verify: {e.__class__.__name__}") from None
        verified = result.parameters
        if result.label != label or not isinstance(verified.get("created"), int) \
                or not isinstance(verified.get("nonce"), str):
            # Cannot happen while both parse the one field line; refuse rather than trust it.
            raise Rejected(401, "malformed_signature", "the verified signature is not the one selected")
        return result

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


def _check_digest(covered: Mapping[str, str], body: bytes) -> None:
    """The Content-Digest value the signature covered must match the body."""
    if not _digest_matches(covered['"content-digest"'], body):
        raise Rejected(400, "bad_digest", "Content-Digest does not match the body")


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
