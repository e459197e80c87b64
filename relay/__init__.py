"""telemetry-relay: collect, spool, redact and ship telemetry from a customer's Kafka hosts."""

__version__ = "0.1.0"
