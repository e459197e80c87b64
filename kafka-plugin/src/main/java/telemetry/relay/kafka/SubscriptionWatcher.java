package telemetry.relay.kafka;

import java.util.ArrayList;
import java.util.Collection;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.Set;
import java.util.TreeMap;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.Config;
import org.apache.kafka.clients.admin.ConfigEntry;
import org.apache.kafka.clients.admin.ListConfigResourcesOptions;
import org.apache.kafka.common.config.ConfigResource;

/**
 * Which client-metrics subscriptions the cluster has and what they ask for, read with an Admin
 * client on a daemon thread every {@code subscription.check.interval.ms}. Without a subscription
 * no client pushes, so the relay's status says so. The broker's own listener is found from its
 * configuration (the first PLAINTEXT one that is not a controller listener) unless
 * {@code telemetry.relay.admin.bootstrap.servers} (and its security settings) say otherwise.
 */
final class SubscriptionWatcher implements Runnable {
    static final String CONFIG_METRICS = "metrics";
    static final String CONFIG_INTERVAL = "interval.ms";
    static final String CONFIG_MATCH = "match";

    private final Settings settings;
    private final Map<String, Object> adminConfig;
    final String bootstrap;
    private volatile boolean running = true;
    private volatile Thread thread;
    private volatile int count = -1;
    private volatile String text = "";
    private volatile String error = "";
    private volatile long maxIntervalMs;

    SubscriptionWatcher(Settings settings, Map<String, ?> brokerConfigs) {
        this.settings = settings;
        this.adminConfig = new HashMap<>(settings.admin);
        Object given = adminConfig.get("bootstrap.servers");
        String found = given != null ? given.toString() : ownListener(brokerConfigs);
        this.bootstrap = found == null ? "" : found;
        adminConfig.put("bootstrap.servers", bootstrap);
        adminConfig.putIfAbsent("client.id", "telemetry-relay-subscription-check");
        // The check's own client must not push metrics: it would be one more client in every count.
        adminConfig.putIfAbsent("enable.metrics.push", "false");
        adminConfig.putIfAbsent("request.timeout.ms", "10000");
        adminConfig.putIfAbsent("default.api.timeout.ms", "15000");
        if (bootstrap.isEmpty()) {
            error = "no PLAINTEXT listener to read the subscriptions on: set telemetry.relay.admin.bootstrap.servers "
                    + "and the admin client's security settings (telemetry.relay.admin.*)";
        }
    }

    void start() {
        if (settings.subscriptionCheckMs <= 0 || bootstrap.isEmpty()) {
            return;
        }
        Thread t = new Thread(this, "telemetry-relay-subscription-check");
        t.setDaemon(true);
        thread = t;
        t.start();
    }

    void stop() {
        running = false;
        Thread t = thread;
        if (t != null) {
            t.interrupt();
        }
    }

    int count() {
        return count;
    }

    String text() {
        return text;
    }

    String error() {
        return error;
    }

    /** The longest push interval any subscription asks for (0 while not known). */
    long maxIntervalMs() {
        return maxIntervalMs;
    }

    @Override
    public void run() {
        Admin admin = null;
        try {
            // The broker calls for the exporter before its listeners serve: a first read now
            // would only log connection warnings.
            Thread.sleep(Math.min(settings.subscriptionCheckMs, 5000));
            while (running) {
                try {
                    if (admin == null) {
                        admin = Admin.create(adminConfig);
                    }
                    check(admin);
                    error = "";
                } catch (InterruptedException e) {
                    return;
                } catch (Exception | LinkageError e) {
                    Throwable cause = e instanceof ExecutionException && e.getCause() != null ? e.getCause() : e;
                    error = "cannot read the client-metrics subscriptions from " + bootstrap + ": " + cause;
                }
                try {
                    Thread.sleep(settings.subscriptionCheckMs);
                } catch (InterruptedException e) {
                    return;
                }
            }
        } catch (InterruptedException e) {
            // stop() before the first read
        } finally {
            if (admin != null) {
                admin.close(java.time.Duration.ofSeconds(2));
            }
        }
    }

    private void check(Admin admin) throws InterruptedException, ExecutionException, TimeoutException {
        Collection<ConfigResource> names = admin.listConfigResources(Set.of(ConfigResource.Type.CLIENT_METRICS),
                new ListConfigResourcesOptions()).all().get(20, TimeUnit.SECONDS);
        Map<ConfigResource, Config> configs = names.isEmpty() ? Map.of()
                : admin.describeConfigs(names).all().get(20, TimeUnit.SECONDS);
        TreeMap<String, Config> sorted = new TreeMap<>();
        configs.forEach((r, c) -> sorted.put(r.name(), c));
        List<String> lines = new ArrayList<>();
        long longest = 0;
        for (Map.Entry<String, Config> e : sorted.entrySet()) {
            String metrics = value(e.getValue(), CONFIG_METRICS);
            String interval = value(e.getValue(), CONFIG_INTERVAL);
            String match = value(e.getValue(), CONFIG_MATCH);
            lines.add(e.getKey() + ": metrics=" + metrics + " interval.ms=" + interval
                    + (match.isEmpty() ? "" : " match=" + match));
            try {
                longest = Math.max(longest, Long.parseLong(interval));
            } catch (NumberFormatException ignored) {
                // an interval the broker refused cannot be set; nothing to count with
            }
        }
        text = String.join("\n", lines);
        maxIntervalMs = longest;
        count = lines.size();
    }

    private static String value(Config c, String name) {
        ConfigEntry e = c.get(name);
        return e == null || e.value() == null ? "" : e.value();
    }

    /** host:port of the broker's first PLAINTEXT, non-controller listener; null when there is none. */
    static String ownListener(Map<String, ?> configs) {
        Object listeners = configs.get("listeners");
        if (listeners == null) {
            return null;
        }
        Map<String, String> protocols = new HashMap<>();
        Object map = configs.get("listener.security.protocol.map");
        if (map != null) {
            for (String kv : map.toString().split(",")) {
                String[] p = kv.trim().split(":", 2);
                if (p.length == 2) {
                    protocols.put(p[0].trim().toUpperCase(), p[1].trim().toUpperCase());
                }
            }
        }
        Set<String> controllers = Set.of();
        Object cl = configs.get("controller.listener.names");
        if (cl != null) {
            controllers = Set.of(cl.toString().toUpperCase().replace(" ", "").split(","));
        }
        for (String l : listeners.toString().split(",")) {
            String spec = l.trim();
            int sep = spec.indexOf("://");
            if (sep <= 0) {
                continue;
            }
            String name = spec.substring(0, sep).toUpperCase();
            String protocol = protocols.getOrDefault(name, name);
            if (controllers.contains(name) || !"PLAINTEXT".equals(protocol)) {
                continue;
            }
            String hostPort = spec.substring(sep + 3);
            int colon = hostPort.lastIndexOf(':');
            if (colon < 0) {
                continue;
            }
            String host = hostPort.substring(0, colon);
            if (host.isEmpty() || "0.0.0.0".equals(host) || "[::]".equals(host) || "::".equals(host)) {
                host = "127.0.0.1";  // bound to every interface: loopback reaches it too
            }
            return host + ":" + hostPort.substring(colon + 1);
        }
        return null;
    }
}
