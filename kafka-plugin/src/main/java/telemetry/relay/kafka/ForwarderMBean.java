package telemetry.relay.kafka;

/**
 * The plugin's health, as the MBean {@code telemetry.relay:type=ClientTelemetry}: what the
 * relay's default Jolokia mappings (configs/mappings/kafka.yaml) and its status read.
 */
public interface ForwarderMBean {
    /** "ClientTelemetryExporter" (Kafka 4.2+) or "ClientTelemetryReceiver" (3.7 to 4.1). */
    String getApi();

    String getVersion();

    String getEndpoint();

    long getReceived();

    long getForwarded();

    long getDropped();

    long getDroppedQueueFull();

    long getDroppedTooLarge();

    long getDroppedUnreachable();

    long getDroppedRejected();

    long getDroppedUnavailable();

    long getDroppedMalformed();

    long getDroppedError();

    long getDroppedShutdown();

    long getQueueBytes();

    long getQueueMaxBytes();

    int getQueueItems();

    String getLastError();

    long getLastErrorTime();

    long getLastForwardTime();

    /** Distinct clients that pushed within the last {@link #getClientsWindowMs()}. */
    int getClientsPushed();

    long getClientsWindowMs();

    /** The push interval the broker last told a client (Kafka 4.2+; 0 before the first push or on older brokers). */
    int getPushIntervalMs();

    /** Client-metrics subscriptions on the cluster; -1 while not known. */
    int getSubscriptionCount();

    /** One line per subscription: name, metrics prefixes, interval, match. */
    String getSubscriptions();

    String getSubscriptionError();

    String getBootstrapServers();
}
