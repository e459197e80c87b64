"""Preparing one batch for one destination: merge -> policy -> compress -> digest.

Owns: PreparedRequest, the bytes of a request exactly as they will be POSTed, made once
per batch and policy version (a retry re-sends them; only the signature is made afresh
per attempt, for the replay window). Merging is byte concatenation of the serialized
requests, a valid protobuf merge of their repeated fields. Large batches are prepared in
a worker thread, so a big compression never blocks the event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from relay import __version__
from relay.compression import compress
from relay.export.signing import content_digest
from relay.otlp import Signal
from relay.policy import Outcome, Policy

__all__ = ["THREAD_PREPARE_BYTES", "PreparedRequest", "prepare", "prepare_blocking"]

# Below this many raw bytes, preparing on the loop costs less than the hop to a thread.
THREAD_PREPARE_BYTES = 64 * 1024


@dataclass(frozen=True)
class PreparedRequest:
    body: bytes  # merged and redacted, before compression: what the outbox shows
    wire: bytes  # compressed: what is sent
    digest: str | None  # RFC 9530 Content-Digest of wire, when requests are signed
    outcome: Outcome | None  # what the policy did; None without a policy
    encoding: str  # of wire: zstd, gzip or none
    policy: Policy | None  # the policy it passed through: a different one means prepare again

    @property
    def policy_sha(self) -> str | None:
        return self.policy.sha256 if self.policy else None

    def headers(self) -> dict[str, str]:
        """The headers that describe this body; the caller adds credentials and the signature."""
        h = {"Content-Type": "application/x-protobuf", "User-Agent": f"telemetry-relay/{__version__}"}
        if self.encoding != "none":
            h["Content-Encoding"] = self.encoding
        if self.policy_sha:
            # Provenance: which policy this body passed through; covered by the signature.
            h["X-Relay-Policy-SHA256"] = self.policy_sha
        if self.digest:
            h["Content-Digest"] = self.digest
        return h

    @property
    def nothing_left(self) -> bool:
        """The policy let nothing of this batch out: there is nothing to send."""
        return self.outcome is not None and self.outcome.items_out == 0


def prepare_blocking(signal: Signal, payloads: Sequence[bytes], policy: Policy | None, compression: str,
                     *, sign: bool) -> PreparedRequest:
    """Prepare here and now. Raises DecodeError when a payload is not valid OTLP (the policy
    has to parse it)."""
    body = b"".join(payloads)
    outcome = None
    if policy is not None:
        body, outcome = policy.apply(signal, body)
    wire = compress(body, compression)
    return PreparedRequest(body, wire, content_digest(wire) if sign else None, outcome, compression, policy)


async def prepare(signal: Signal, payloads: Sequence[bytes], policy: Policy | None, compression: str,
                  *, sign: bool) -> PreparedRequest:
    """Prepare on the loop, or in a worker thread from THREAD_PREPARE_BYTES on."""
    if sum(len(p) for p in payloads) >= THREAD_PREPARE_BYTES:
        return await asyncio.to_thread(prepare_blocking, signal, payloads, policy, compression, sign=sign)
    return prepare_blocking(signal, payloads, policy, compression, sign=sign)
