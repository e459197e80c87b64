package telemetry.relay.kafka;

import java.lang.management.ManagementFactory;
import java.nio.ByteBuffer;
import java.util.Map;

import javax.management.JMException;
import javax.management.MBeanServer;
import javax.management.ObjectName;
import javax.management.StandardMBean;

import org.apache.kafka.common.Uuid;
import org.apache.kafka.server.authorizer.AuthorizableRequestContext;
import org.apache.kafka.server.telemetry.ClientTelemetryPayload;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * What both reporter classes share: the settings, the byte-bounded queue, the sender thread,
 * the subscription check, the MBean, and {@link #export}, the one call the broker's request
 * thread makes. export copies the push and its sender's identity onto the queue and returns: it
 * never blocks and never throws (a receiver that throws makes the broker answer the client
 * INVALID_RECORD, and the client stops pushing until it restarts).
 *
 * <p>The threads and the MBean start with the broker's first call for the exporter or receiver
 * (the instance the broker wires in), not at configure: a reporter the broker only constructs
 * (a KRaft controller's, say) stays idle.
 */
final class Forwarder implements ForwarderMBean {
    static final String VERSION = versionOfJar();
    static final String MBEAN = "telemetry.relay:type=ClientTelemetry";
    private static final Logger LOG = LoggerFactory.getLogger(Forwarder.class);

    private final String api;
    private volatile Settings settings = Settings.defaults();
    private volatile Map<String, ?> brokerConfigs = Map.of();
    private volatile String clusterId;
    private volatile String brokerId;
    private volatile PushQueue queue = new PushQueue(settings.queueMaxBytes);
    private final Stats stats = new Stats();
    private Sender sender;
    private SubscriptionWatcher watcher;
    private ObjectName registered;

    Forwarder(String api) {
        this.api = api;
    }

    // -- lifecycle (the broker's threads, never a request's) -----------------------------------

    synchronized void configure(Map<String, ?> configs) {
        brokerConfigs = configs == null ? Map.of() : configs;
        settings = Settings.from(brokerConfigs);
        if (sender == null) {  // once the sender runs, its queue stays
            queue = new PushQueue(settings.queueMaxBytes);
        }
        if (!settings.problems.isEmpty()) {
            stats.error(settings.problems);
            LOG.warn("telemetry-relay client metrics plugin: {}", settings.problems);
        }
        Object node = brokerConfigs.get("node.id");
        if (node == null) {
            node = brokerConfigs.get("broker.id");
        }
        if (brokerId == null && node != null) {
            brokerId = node.toString();
        }
    }

    /** The broker's metrics context: kafka.cluster.id and kafka.broker.id (or kafka.node.id). */
    void contextChange(Map<String, String> labels) {
        String cluster = labels.get("kafka.cluster.id");
        if (cluster != null) {
            clusterId = cluster;
        }
        String node = labels.getOrDefault("kafka.broker.id", labels.get("kafka.node.id"));
        if (node != null) {
            brokerId = node;
        }
    }

    /** The broker asked for the exporter or receiver: this instance is the one it calls. */
    synchronized void activate() {
        if (sender != null) {
            return;
        }
        sender = new Sender(settings, queue, stats);
        sender.start();
        watcher = new SubscriptionWatcher(settings, brokerConfigs);
        watcher.start();
        register();
        LOG.info("telemetry-relay client metrics plugin {} ({}) forwards to {}", VERSION, api, settings.endpoint);
    }

    synchronized void close() {
        if (watcher != null) {
            watcher.stop();
        }
        if (sender != null) {
            sender.stop(2000);
        }
        unregister();
    }

    private void register() {
        try {
            MBeanServer server = ManagementFactory.getPlatformMBeanServer();
            ObjectName name = new ObjectName(MBEAN);
            if (server.isRegistered(name)) {
                server.unregisterMBean(name);  // an earlier instance's: the live one wins
            }
            server.registerMBean(new StandardMBean(this, ForwarderMBean.class), name);
            registered = name;
        } catch (JMException | RuntimeException e) {
            stats.error("cannot register the MBean " + MBEAN + ": " + e);
            LOG.warn("cannot register the MBean {}", MBEAN, e);
        }
    }

    private void unregister() {
        if (registered == null) {
            return;
        }
        try {
            ManagementFactory.getPlatformMBeanServer().unregisterMBean(registered);
        } catch (JMException | RuntimeException e) {
            // already gone
        }
        registered = null;
    }

    // -- the request thread's call -------------------------------------------------------------

    /** One client push. pushIntervalMs is 0 where the broker does not say (before Kafka 4.2). */
    void export(AuthorizableRequestContext ctx, ClientTelemetryPayload payload, int pushIntervalMs) {
        long cost = 0;
        try {
            stats.received.incrementAndGet();
            long now = System.currentTimeMillis();
            Uuid instance = payload.clientInstanceId();
            stats.pushed(instance, now);
            if (pushIntervalMs > 0) {
                stats.pushIntervalMs = pushIntervalMs;
            }
            ByteBuffer data = payload.data();
            if (data == null) {
                stats.drop(Stats.Drop.MALFORMED, "a push from client " + instance + " has no data");
                return;
            }
            PushQueue q = queue;
            int n = data.remaining();
            cost = (long) n + PushQueue.OVERHEAD;
            if (cost > q.maxBytes) {
                cost = 0;
                stats.drop(Stats.Drop.TOO_LARGE, "a push of " + n + " bytes from client " + instance
                        + " is larger than telemetry.relay.queue.max.bytes=" + q.maxBytes);
                return;
            }
            if (!q.reserve(cost)) {
                cost = 0;  // nothing taken: counted, not logged (it happens at the push rate)
                stats.drop(Stats.Drop.QUEUE_FULL, null);
                return;
            }
            byte[] copy = new byte[n];
            data.duplicate().get(copy);  // the broker may reuse its buffer once we return
            q.add(new PushQueue.Push(copy, ClientIdentity.of(ctx, instance, clusterId, brokerId), now));
            cost = 0;
            Sender s = sender;
            if (s != null) {
                s.wake();
            }
        } catch (Throwable t) {
            if (cost > 0) {
                queue.release(cost);
            }
            stats.drop(Stats.Drop.ERROR, "internal error: " + t);
        }
    }

    // -- the MBean -------------------------------------------------------------------------------

    @Override
    public String getApi() {
        return api;
    }

    @Override
    public String getVersion() {
        return VERSION;
    }

    @Override
    public String getEndpoint() {
        return settings.endpoint;
    }

    @Override
    public long getReceived() {
        return stats.received.get();
    }

    @Override
    public long getForwarded() {
        return stats.forwarded.get();
    }

    @Override
    public long getDropped() {
        return stats.droppedTotal();
    }

    @Override
    public long getDroppedQueueFull() {
        return stats.dropped(Stats.Drop.QUEUE_FULL);
    }

    @Override
    public long getDroppedTooLarge() {
        return stats.dropped(Stats.Drop.TOO_LARGE);
    }

    @Override
    public long getDroppedUnreachable() {
        return stats.dropped(Stats.Drop.UNREACHABLE);
    }

    @Override
    public long getDroppedRejected() {
        return stats.dropped(Stats.Drop.REJECTED);
    }

    @Override
    public long getDroppedUnavailable() {
        return stats.dropped(Stats.Drop.UNAVAILABLE);
    }

    @Override
    public long getDroppedMalformed() {
        return stats.dropped(Stats.Drop.MALFORMED);
    }

    @Override
    public long getDroppedError() {
        return stats.dropped(Stats.Drop.ERROR);
    }

    @Override
    public long getDroppedShutdown() {
        return stats.dropped(Stats.Drop.SHUTDOWN);
    }

    @Override
    public long getQueueBytes() {
        return queue.bytes();
    }

    @Override
    public long getQueueMaxBytes() {
        return queue.maxBytes;
    }

    @Override
    public int getQueueItems() {
        return queue.size();
    }

    @Override
    public String getLastError() {
        return stats.lastError();
    }

    @Override
    public long getLastErrorTime() {
        return stats.lastErrorTime();
    }

    @Override
    public long getLastForwardTime() {
        return stats.lastForwardTime.get();
    }

    @Override
    public int getClientsPushed() {
        return stats.clientsWithin(getClientsWindowMs(), System.currentTimeMillis());
    }

    /** The longest interval a subscription asks for, else the broker's last push interval, else the default. */
    @Override
    public long getClientsWindowMs() {
        SubscriptionWatcher w = watcher;
        long window = w == null ? 0 : w.maxIntervalMs();
        if (window <= 0) {
            window = stats.pushIntervalMs;
        }
        return window > 0 ? window : settings.defaultWindowMs;
    }

    @Override
    public int getPushIntervalMs() {
        return stats.pushIntervalMs;
    }

    @Override
    public int getSubscriptionCount() {
        SubscriptionWatcher w = watcher;
        return w == null ? -1 : w.count();
    }

    @Override
    public String getSubscriptions() {
        SubscriptionWatcher w = watcher;
        return w == null ? "" : w.text();
    }

    @Override
    public String getSubscriptionError() {
        SubscriptionWatcher w = watcher;
        return w == null ? "" : w.error();
    }

    @Override
    public String getBootstrapServers() {
        SubscriptionWatcher w = watcher;
        return w == null ? "" : w.bootstrap;
    }

    private static String versionOfJar() {
        String v = Forwarder.class.getPackage().getImplementationVersion();
        return v == null ? "dev" : v;
    }
}
