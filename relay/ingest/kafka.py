"""The ingest's Kafka side: verified requests published into a topic per signal, and read back.

Owns: `KafkaPublisher`, which produces each accepted request as one record (the value is
the decompressed Export{Metrics,Logs,Trace}ServiceRequest protobuf, what the OpenTelemetry
Collector's Kafka receiver reads with its `otlp_proto` encoding; the key is the relay's key
id, so one relay's data stays ordered in one partition; the headers carry the key id,
policy hash, relay instance and sequence) with an idempotent, acks=all producer, and
resolves the ingest's wait only on Kafka's delivery report; and `KafkaLedger`, which tails
the same topics' headers so the fleet view (relay/ingest/fleet.py) counts what is in Kafka,
whichever ingest replica put it there, before or after a restart.

librdkafka's callbacks run on the one thread that polls it; results cross to the event
loop with call_soon_threadsafe, so the loop never waits on Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from relay.otlp import SIGNALS, Signal

log = logging.getLogger("relay.ingest.kafka")

# The Collector's Kafka receiver reads these topics by default (one signal per topic).
DEFAULT_TOPICS: dict[Signal, str] = {"metrics": "otlp_metrics", "logs": "otlp_logs", "traces": "otlp_spans"}

# Record headers (values UTF-8). What the fleet view is rebuilt from: it never parses values.
H_KEY_ID = "relay.key_id"
H_POLICY = "relay.policy_sha256"
H_INSTANCE = "relay.instance"
H_SEQUENCE = "relay.sequence"  # "<first>-<last>", as X-Relay-Sequence
H_USER_AGENT = "relay.user_agent"
H_ITEMS = "relay.items"
H_NEWEST = "relay.newest_unix_nano"  # the newest data in the request, for the fleet's lag
H_DROPPED = "relay.dropped"  # the relay's own drop counters the request carried (JSON), if any

# Bytes a record takes beyond its value (key, headers, record overhead), kept under the cap.
RECORD_OVERHEAD = 4096


class KafkaUnavailable(Exception):
    """Kafka did not take the record (down, timed out, refused): the ingest answers 503."""


class RecordTooLarge(Exception):
    """The record would exceed the producer's message.max.bytes: the ingest answers 413,
    which makes the relay split the batch."""


def record_headers(request: Mapping[str, str], key_id: str | None, items: int, newest_ns: int,
                   dropped: str | None) -> dict[str, bytes]:
    """The headers of one accepted request's record (request: its verified HTTP headers)."""
    from relay.export import sequence

    out = {H_KEY_ID: key_id or "", H_POLICY: request.get("X-Relay-Policy-SHA256", ""),
           H_INSTANCE: request.get(sequence.INSTANCE_HEADER, ""), H_SEQUENCE: request.get(sequence.SEQUENCE_HEADER, ""),
           H_USER_AGENT: request.get("User-Agent", ""), H_ITEMS: str(items), H_NEWEST: str(newest_ns)}
    if dropped:
        out[H_DROPPED] = dropped
    return {k: v.strip().encode() for k, v in out.items() if v}


class KafkaPublisher:
    """One idempotent producer (acks=all) and the thread that polls it for delivery reports."""

    def __init__(self, bootstrap: str, topics: Mapping[Signal, str], *, timeout: float = 10.0,
                 max_message: int = 1_000_000, partitions: int = 6, extra: Mapping[str, Any] | None = None) -> None:
        self.bootstrap = bootstrap
        self.topics = dict(topics)
        self.timeout = timeout
        self.max_message = max_message
        self.partitions = partitions
        self.config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": "telemetry-relay-ingest",
            "acks": "all",
            "enable.idempotence": True,  # a producer retry never writes a record twice
            "linger.ms": 5,
            "compression.type": "zstd",  # the receiver's client decompresses transparently
            "message.max.bytes": max_message,
            # A delivery report comes within this, success or failure, so no request waits longer.
            "message.timeout.ms": int(timeout * 1000),
            "error_cb": self._on_error,
            **(extra or {}),
        }
        self._producer: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._down: str | None = None  # why Kafka is thought unreachable, until a record goes through
        self.published = {s: 0 for s in SIGNALS}
        self.failed = 0

    def start(self) -> None:
        from confluent_kafka import Producer

        self._loop = asyncio.get_running_loop()
        self._producer = Producer(self.config)
        self._thread = threading.Thread(target=self._poll, name="kafka-producer", daemon=True)
        self._thread.start()
        log.info("publishing to Kafka at %s, topics %s", self.bootstrap,
                 ", ".join(f"{s}={t}" for s, t in self.topics.items()))

    def _poll(self) -> None:
        while not self._stopping.is_set():
            self._producer.poll(0.1)

    def _on_error(self, err: Any) -> None:
        from confluent_kafka import KafkaError

        # Every broker unreachable: refuse at once instead of letting each request wait out the timeout.
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._down = str(err)
            log.warning("Kafka unavailable: %s", err)
        else:
            log.info("Kafka client: %s", err)

    @property
    def down(self) -> str | None:
        return self._down

    async def publish(self, signal: Signal, value: bytes, key: str, headers: list[tuple[str, bytes]]) -> None:
        """Returns once Kafka acknowledged the record (acks=all). Raises KafkaUnavailable or RecordTooLarge."""
        from confluent_kafka import KafkaException

        if len(value) + RECORD_OVERHEAD > self.max_message:
            raise RecordTooLarge(f"a {len(value)}-byte request exceeds the Kafka record limit "
                                 f"({self.max_message} bytes): send smaller batches")
        if self._down is not None and not await self._reachable():
            raise KafkaUnavailable(f"Kafka is unavailable: {self._down}")
        assert self._loop is not None
        done: asyncio.Future[None] = self._loop.create_future()
        loop = self._loop

        def delivered(err: Any, _msg: Any) -> None:  # on the poll thread
            loop.call_soon_threadsafe(self._settle, done, err)

        try:
            self._producer.produce(self.topics[signal], value=value, key=key.encode(), headers=headers,
                                   on_delivery=delivered)
        except BufferError:
            raise KafkaUnavailable("the Kafka producer's queue is full") from None
        except KafkaException as e:
            raise KafkaUnavailable(f"Kafka refused the record: {e}") from None
        await done
        self.published[signal] += 1

    def _settle(self, done: asyncio.Future[None], err: Any) -> None:
        if done.done():
            return
        if err is None:
            self._down = None
            done.set_result(None)
        else:
            self.failed += 1
            done.set_exception(KafkaUnavailable(f"Kafka did not acknowledge the record: {err}"))

    async def _reachable(self) -> bool:
        """While marked down: does the cluster answer a metadata request now? (in a worker thread)"""
        try:
            await asyncio.to_thread(self._producer.list_topics, timeout=1.0)
        except Exception:
            return False
        self._down = None
        log.info("Kafka reachable again")
        return True

    def ensure_topics(self) -> None:
        """Create the topics when missing (blocking; called from a worker thread). An existing
        topic is left as it is: a vendor may size and configure them beforehand."""
        from confluent_kafka import KafkaError
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        wanted = [NewTopic(t, num_partitions=self.partitions) for t in self.topics.values()]
        for topic, future in admin.create_topics(wanted, request_timeout=self.timeout).items():
            try:
                future.result()
                log.info("created Kafka topic %s (%d partitions)", topic, self.partitions)
            except Exception as e:
                error = e.args[0] if e.args else None
                if getattr(error, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise

    def stats(self) -> dict[str, Any]:
        return {"bootstrap": self.bootstrap, "topics": self.topics, "published": self.published,
                "failed": self.failed, "down": self._down}

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (bounded), then stop the poll thread."""
        if self._producer is not None:
            self._producer.flush(timeout)
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)


class KafkaLedger:
    """Tails every partition of the topics from their earliest retained offset, headers only,
    and hands each record's headers and timestamp to `observe` (on its own thread)."""

    def __init__(self, bootstrap: str, topics: Mapping[Signal, str],
                 observe: Callable[[Signal, Mapping[str, str], float], None]) -> None:
        self.bootstrap = bootstrap
        self.topics = dict(topics)
        self.observe = observe
        self.read = 0
        self.caught_up = False  # every partition read to the end it had when the ledger started
        self.retention_trimmed = False  # some partition no longer starts at offset 0
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, ensure_topics: Callable[[], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(ensure_topics,), name="kafka-ledger", daemon=True)
        self._thread.start()

    def _run(self, ensure_topics: Callable[[], None]) -> None:
        from confluent_kafka import Consumer

        while not self._stopping.is_set():
            try:
                ensure_topics()
                break
            except Exception as e:  # Kafka not up yet: the publisher answers 503 meanwhile
                log.warning("cannot create the Kafka topics yet: %s", e)
                self._stopping.wait(1.0)
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "telemetry-relay-ingest-ledger",
                             "enable.auto.commit": False, "enable.partition.eof": False})
        try:
            by_topic = {t: s for s, t in self.topics.items()}
            parts, ends = self._start_points(consumer)
            consumer.assign(parts)  # no group membership: every ingest reads everything
            position = {k: 0 for k, end in ends.items() if end > 0}
            self.caught_up = not position
            while not self._stopping.is_set():
                batch: list[Any] = consumer.consume(num_messages=500, timeout=0.2)
                for msg in batch:
                    if msg.error():
                        continue
                    headers = {k: bytes(v).decode("utf-8", "replace") for k, v in (msg.headers() or []) if v}
                    _, stamp = msg.timestamp()
                    self.observe(by_topic[msg.topic()], headers, stamp / 1000.0)
                    self.read += 1
                    key = (msg.topic(), msg.partition())
                    if not self.caught_up and key in position:
                        position[key] = msg.offset() + 1
                        self.caught_up = all(position[k] >= ends[k] for k in position)
        except Exception:
            log.exception("the Kafka ledger stopped; the fleet view no longer follows Kafka")
        finally:
            consumer.close()

    def _start_points(self, consumer: Any) -> tuple[list[Any], dict[tuple[str, int], int]]:
        """Every partition from its beginning, and the end each has now (retried while a topic
        just created has no leader yet, or Kafka is not up)."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        while True:
            try:
                parts = [TopicPartition(t, p, OFFSET_BEGINNING) for t, n in self._partitions(consumer).items()
                         for p in range(n)]
                ends = {}
                for tp in parts:
                    low, high = consumer.get_watermark_offsets(tp, timeout=10)
                    ends[(tp.topic, tp.partition)] = high
                    self.retention_trimmed |= low > 0
                return parts, ends
            except Exception as e:
                log.info("the Kafka ledger waits for the topics' partitions: %s", e)
                if self._stopping.wait(0.5):
                    return [], {}

    def _partitions(self, consumer: Any) -> dict[str, int]:
        """Partitions per topic, once the metadata of each names some (a topic just created
        may take a moment to show them)."""
        while True:
            metadata = consumer.list_topics(timeout=30)
            counts = {t: len(metadata.topics[t].partitions) if t in metadata.topics else 0
                      for t in self.topics.values()}
            if all(counts.values()) or self._stopping.wait(0.5):
                return counts

    def stats(self) -> dict[str, Any]:
        return {"records_read": self.read, "caught_up": self.caught_up}

    def close(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(5)
