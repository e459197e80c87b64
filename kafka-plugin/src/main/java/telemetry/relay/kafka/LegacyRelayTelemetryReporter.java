package telemetry.relay.kafka;

import org.apache.kafka.server.telemetry.ClientTelemetry;
import org.apache.kafka.server.telemetry.ClientTelemetryReceiver;

/**
 * The plugin for Kafka 3.7 to 4.1 (KIP-714's ClientTelemetryReceiver, deprecated since 4.2):
 * register it with {@code metric.reporters=telemetry.relay.kafka.LegacyRelayTelemetryReporter}.
 * A class of its own because a 4.1 broker has no ClientTelemetryExporterProvider to load, and a
 * 4.2+ broker registers a class that implements both only through the new interface. The old
 * interface does not carry the push interval.
 */
@SuppressWarnings("removal")  // deprecated for removal since 4.2; this class is for the brokers before that
public class LegacyRelayTelemetryReporter extends ForwardingReporter implements ClientTelemetry {
    public LegacyRelayTelemetryReporter() {
        super("ClientTelemetryReceiver");
    }

    @Override
    public ClientTelemetryReceiver clientReceiver() {
        forwarder.activate();
        return (context, payload) -> forwarder.export(context, payload, 0);
    }
}
