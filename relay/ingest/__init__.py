"""The vendor's side, for reference: what `telemetry-relay ingest` runs.

- server.py: the HTTP ingest (verify, decompress, decode, store, /stats);
- verify.py: the signature, digest and replay checks every request passes first;
- replay.py: the nonces seen within the window, kept across restarts (or shared in Redis);
- store.py: the JSON-lines store, and the sequence ranges stored already;
- bundle_import.py: `ingest import`, an offline bundle checked and stored;
- kafka.py: verified requests published into a topic per signal, and read back for the fleet;
- fleet.py: per relay, what arrived, what arrived twice, and the gaps, explained or not (/fleet).
"""

from relay.ingest.server import Ingest, serve

__all__ = ["Ingest", "serve"]
