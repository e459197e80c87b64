"""The vendor's side, for reference: what `telemetry-relay ingest` runs.

- server.py: the HTTP ingest (verify, decompress, decode, store, /stats);
- verify.py: the signature, digest and replay checks every request passes first;
- replay.py: the nonces seen within the window, kept across restarts (or shared in Redis);
- kafka.py: verified requests published into a topic per signal, and read back for the fleet;
- fleet.py: per relay, what arrived, what arrived twice, and the gaps, explained or not (/fleet).
"""

from relay.ingest.server import Ingest, serve

__all__ = ["Ingest", "serve"]
