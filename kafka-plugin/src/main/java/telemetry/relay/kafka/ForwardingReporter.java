package telemetry.relay.kafka;

import java.util.List;
import java.util.Map;

import org.apache.kafka.common.metrics.KafkaMetric;
import org.apache.kafka.common.metrics.MetricsContext;
import org.apache.kafka.common.metrics.MetricsReporter;

/**
 * What both API generations share: a MetricsReporter that reports no broker metrics of its
 * own (the callbacks are no-ops) and hands its configuration and the cluster's context to
 * one {@link Forwarder}. It implements only MetricsReporter, so a 4.1 broker can load it.
 */
abstract class ForwardingReporter implements MetricsReporter {
    protected final Forwarder forwarder;

    ForwardingReporter(String api) {
        forwarder = new Forwarder(api);
    }

    @Override
    public void configure(Map<String, ?> configs) {
        forwarder.configure(configs);
    }

    @Override
    public void contextChange(MetricsContext context) {
        forwarder.contextChange(context.contextLabels());
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
