package telemetry.relay.kafka;

import java.util.List;
import java.util.Map;

import org.apache.kafka.common.metrics.KafkaMetric;
import org.apache.kafka.common.metrics.MetricsContext;
import org.apache.kafka.common.metrics.MetricsReporter;
import org.apache.kafka.server.telemetry.ClientTelemetryExporter;
import org.apache.kafka.server.telemetry.ClientTelemetryExporterProvider;

/**
 * The plugin for Kafka 4.2 and later (KIP-1217's ClientTelemetryExporter): register it with
 * {@code metric.reporters=telemetry.relay.kafka.RelayTelemetryReporter}. Every client push
 * reaches {@link Forwarder#export} with the push interval the broker gave the client. It
 * reports no broker metrics of its own: the MetricsReporter callbacks are no-ops.
 */
public class RelayTelemetryReporter implements MetricsReporter, ClientTelemetryExporterProvider {
    private final Forwarder forwarder = new Forwarder("ClientTelemetryExporter");

    @Override
    public void configure(Map<String, ?> configs) {
        forwarder.configure(configs);
    }

    @Override
    public void contextChange(MetricsContext context) {
        forwarder.contextChange(context.contextLabels());
    }

    @Override
    public ClientTelemetryExporter clientTelemetryExporter() {
        forwarder.activate();
        return (context, payload) -> forwarder.export(context.authorizableRequestContext(), payload,
                context.pushIntervalMs());
    }

    @Override
    public void init(List<KafkaMetric> metrics) {
    }

    @Override
    public void metricChange(KafkaMetric metric) {
    }

    @Override
    public void metricRemoval(KafkaMetric metric) {
    }

    @Override
    public void close() {
        forwarder.close();
    }
}
