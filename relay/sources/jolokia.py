"""Jolokia source: Kafka broker and JVM metrics read over the Jolokia agent's HTTP API.

Owns: one bulk POST read per target per interval for every bean pattern the mapping rules
name (wildcards included), turning the answer into OTLP with those rules, and the
target's identity (JVM start time for cumulative sums, kafka.cluster.id, kafka.broker.id),
and the KIP-714 plugin's MBean as read (every attribute: the status shows its state).
An entry that fails (404 for an absent MBean, say) is counted and the rest still maps.
The answer is read up to a byte cap, and decoded and mapped in a worker thread under a
time bound; an answer that is not JSON (or nests deeper than the decoder goes) fails that
read with a short error naming the target.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from google.protobuf.message import Message

from relay import __version__
from relay.mapping import Mappings, parse_props
from relay.otlp import MetricsBuilder
from relay.source_settings import JolokiaSettings, ScrapeTargetSettings
from relay.sources.base import ScrapeSource
from relay.sources.scrape_bounds import Deadline, ScrapeLimitExceeded, excerpt, read_body, short

log = logging.getLogger("relay.sources.jolokia")

SCOPE = "telemetry-relay/jolokia"
RUNTIME = "java.lang:type=Runtime"
CLUSTER_ID = "kafka.server:type=KafkaServer,name=ClusterId"
APP_INFO = "kafka.server:type=app-info,*"
# The telemetry-relay KIP-714 broker plugin (kafka-plugin/): its counters map through the
# rules like any bean's; all of it, texts too, is kept for the status.
CLIENT_TELEMETRY = "telemetry.relay:type=ClientTelemetry"


class JolokiaError(Exception):
    """The target did not answer with a Jolokia bulk response."""


@dataclass
class JolokiaReading:
    request: Message
    points: int
    entry_errors: dict[int, int] = field(default_factory=dict)  # HTTP-like status -> entries
    identity: dict[str, str] = field(default_factory=dict)
    client_telemetry: dict[str, Any] | None = None  # the plugin's MBean; None where it is not loaded


def bulk_request(mappings: Mappings) -> list[dict[str, Any]]:
    """The bulk read: identity entries first, then one entry per bean pattern."""
    entries: list[dict[str, Any]] = [
        {"type": "read", "mbean": RUNTIME, "attribute": ["StartTime"]},
        {"type": "read", "mbean": CLUSTER_ID, "attribute": ["Value"]},
        {"type": "read", "mbean": APP_INFO},
    ]
    for bean, attrs in mappings.read_plan().items():
        if bean == CLIENT_TELEMETRY:
            entries.append({"type": "read", "mbean": bean})  # every attribute
        else:
            entries.append({"type": "read", "mbean": bean, "attribute": attrs})
    return entries


_IDENTITY = {RUNTIME, CLUSTER_ID, APP_INFO}


def _is_pattern(bean: str) -> bool:
    return "*" in bean or "?" in bean


def _navigate(value: Any, path: tuple[str, ...]) -> Any:
    for step in path:
        if not isinstance(value, dict):
            return None
        value = value.get(step)
    return value


def _number(value: Any) -> int | float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):  # some agents serialize longs as strings
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return None
    return None


def _values_by_bean(request_bean: str, value: Any) -> dict[str, dict[str, Any]]:
    if _is_pattern(request_bean):
        return value if isinstance(value, dict) else {}
    return {request_bean: value} if isinstance(value, dict) else {}


def parse_answer(raw: bytes, url: str) -> Any:
    """The decoded JSON answer. Raises JolokiaError, quoting only a short excerpt."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise JolokiaError(f"{url} did not answer JSON: {e.msg} at offset {e.pos}: {excerpt(e.doc, e.pos)}") from None
    except UnicodeDecodeError as e:
        raise JolokiaError(f"{url} did not answer UTF-8 JSON: {e.reason}: {excerpt(raw, e.start)}") from None
    except RecursionError:
        # The C decoder stops at the interpreter's recursion limit (1000 levels).
        raise JolokiaError(f"{url} answered JSON nested too deeply to decode") from None
    except ValueError as e:  # what else json.loads raises on odd input (an int too long, say)
        raise JolokiaError(f"{url} did not answer JSON: {short(str(e))}") from None


def map_response(
    sent: list[dict[str, Any]], response: Any, mappings: Mappings, resource: dict[str, Any],
    now_ns: int | None = None, deadline: Deadline | None = None,
) -> JolokiaReading:
    """Map a Jolokia bulk response (the parsed JSON) to one OTLP request."""
    if not isinstance(response, list) or len(response) != len(sent):
        raise JolokiaError(
            f"expected a JSON list of {len(sent)} responses, got "
            f"{type(response).__name__}{'' if not isinstance(response, list) else f' of {len(response)}'}"
        )
    now_ns = now_ns or time.time_ns()
    identity: dict[str, str] = {}
    start_ns = 0
    # Identity first: it goes into the resource and the start time of every counter.
    for entry_sent, entry in zip(sent, response, strict=True):
        if not isinstance(entry, dict) or entry.get("status") != 200 or not isinstance(entry.get("value"), dict):
            continue
        value = entry["value"]
        if entry_sent.get("mbean") == RUNTIME:
            st = _number(value.get("StartTime"))
            if st:
                start_ns = int(st * 1_000_000)
        elif entry_sent.get("mbean") == CLUSTER_ID:
            cid = value.get("Value")
            if isinstance(cid, str) and cid:
                identity["kafka.cluster.id"] = cid
        elif entry_sent.get("mbean") == APP_INFO:
            for name in value:
                bid = parse_props(name.partition(":")[2]).get("id")
                if bid is not None:
                    identity["kafka.broker.id"] = bid
                    break

    b = MetricsBuilder({**resource, **identity}, SCOPE, __version__)
    errors: dict[int, int] = {}
    client_telemetry: dict[str, Any] | None = None
    for entry_sent, entry in zip(sent, response, strict=True):
        if deadline is not None:
            deadline.check()
        if entry_sent.get("mbean") in _IDENTITY:
            continue  # a broker without app-info (a plain JVM) is not an error
        if not isinstance(entry, dict):
            errors[0] = errors.get(0, 0) + 1
            continue
        status = entry.get("status")
        if status != 200:
            code = status if isinstance(status, int) else 0
            errors[code] = errors.get(code, 0) + 1
            continue
        for bean_name, bean_values in _values_by_bean(entry_sent.get("mbean", ""), entry.get("value")).items():
            if not isinstance(bean_values, dict):
                continue
            if bean_name == CLIENT_TELEMETRY:
                client_telemetry = {k: v for k, v in bean_values.items() if isinstance(v, str | int | float)}
            ctx = {"params": mappings.params_for(bean_name), "bean": bean_values}
            for rule in mappings.rules_for(bean_name):
                value = _number(_navigate(bean_values.get(rule.attribute), rule.path))
                if value is None or (rule.drop_negative and value < 0):
                    continue
                if rule.scale != 1.0:
                    value = value * rule.scale
                attrs = mappings.attrs_for(rule, ctx)
                metric = b.metric(rule.metric, rule.type, rule.unit, rule.desc)
                b.point(metric, value, now_ns, start_ns if rule.type != "gauge" else 0, attrs)
    return JolokiaReading(b.finish(), b.points, errors, identity, client_telemetry)


class JolokiaSource(ScrapeSource):
    def __init__(self, target: ScrapeTargetSettings, password: str | None, mappings: Mappings,
                 settings: JolokiaSettings, base_resource: dict[str, Any], name: str | None = None) -> None:
        super().__init__("jolokia", target, password, settings.interval, settings.timeout, base_resource, name)
        self.mappings = mappings
        self.settings = settings
        self.resource = {
            "service.name": target.service_name or mappings.service_name,
            "service.instance.id": f"{socket.gethostname()}:{self.url_parts.port}",
            "host.name": self.host_name,
        }
        self.sent = bulk_request(mappings)
        self._body = json.dumps(self.sent).encode()
        self.last_entry_errors: dict[int, int] = {}
        self.identity: dict[str, str] = {}
        self.client_telemetry: dict[str, Any] | None = None

    async def collect(self) -> list[Message]:
        session = self._http.get()
        try:
            async with session.post(self.target.url, data=self._body,
                                    headers={"Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    raise JolokiaError(f"HTTP {resp.status} from {self.target.url}")
                raw = await read_body(resp, self.target.url, self.settings.max_body_bytes,
                                      "sources.jolokia.max_body_bytes")
        except (aiohttp.ClientError, TimeoutError) as e:
            raise JolokiaError(f"cannot read {self.target.url}: {e.__class__.__name__}: {e or 'timed out'}") from None
        deadline = Deadline(self.target.url, self.settings.parse_timeout, "sources.jolokia.parse_timeout")
        # A large answer takes a while to decode and map: off the loop, so nothing else waits.
        result = await asyncio.to_thread(self._map, raw, deadline)
        self.last_entry_errors = result.entry_errors
        self.identity = result.identity
        self.client_telemetry = result.client_telemetry
        return [result.request]

    def _map(self, raw: bytes, deadline: Deadline) -> JolokiaReading:
        url = self.target.url
        data = parse_answer(raw, url)
        try:
            return map_response(self.sent, data, self.mappings, self.resource, deadline=deadline)
        except ScrapeLimitExceeded:
            raise  # already names the target and the limit
        except JolokiaError as e:
            raise JolokiaError(f"{url}: {e}") from None
        except Exception as e:  # a mapping bug on hostile input is this target's error, kept short
            raise JolokiaError(f"{url}: cannot map the answer: {short(f'{e.__class__.__name__}: {e}')}") from None

    def details(self) -> dict[str, Any]:
        return {"url": self.target.url, "mappings": list(self.mappings.names),
                "entry_errors": {str(k): v for k, v in self.last_entry_errors.items()}, "identity": self.identity,
                "client_telemetry": self.client_telemetry}

