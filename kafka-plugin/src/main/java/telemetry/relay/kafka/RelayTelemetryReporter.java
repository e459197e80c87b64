package telemetry.relay.kafka;

import org.apache.kafka.server.telemetry.ClientTelemetryExporter;
import org.apache.kafka.server.telemetry.ClientTelemetryExporterProvider;

/**
 * The plugin for Kafka 4.2 and later (KIP-1217's ClientTelemetryExporter): register it with
 * {@code metric.reporters=telemetry.relay.kafka.RelayTelemetryReporter}. Every client push
 * reaches {@link Forwarder#export} with the push interval the broker gave the client. It
 * reports no broker metrics of its own: the MetricsReporter callbacks are no-ops.
 */
public class RelayTelemetryReporter extends ForwardingReporter implements ClientTelemetryExporterProvider {
    public RelayTelemetryReporter() {
        super("ClientTelemetryExporter");
    }

    @Override
    public ClientTelemetryExporter clientTelemetryExporter() {
        forwarder.activate();
        return (context, payload) -> forwarder.export(context.authorizableRequestContext(), payload,
                context.pushIntervalMs());
    }
}
