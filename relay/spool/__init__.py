"""The durable spool: every collected or received request is on disk before it counts.

One owner per module:
  queue.py       the record format and one signal's on-disk queue, with its transaction
  spool.py       Spool, the async face: group commit, lease/ack, byte cap and age, gauges
  deadletter.py  the dead-letter area
  recovery.py    integrity check, quarantine and salvage of a damaged queue
  reserve.py     the room kept back so that a full disk never stops deliveries
  inspect.py     read-only inspection for the CLI, safe beside a running relay

Callers import from here; the names below are the spool's whole interface.
"""

from relay.spool.queue import Cursor, Entry, Lease, QueueState
from relay.spool.recovery import UnsafeSpoolDirectory
from relay.spool.spool import Spool, SpoolError

__all__ = ["Cursor", "Entry", "Lease", "QueueState", "Spool", "SpoolError", "UnsafeSpoolDirectory"]
