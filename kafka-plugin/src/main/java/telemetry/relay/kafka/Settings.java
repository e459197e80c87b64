package telemetry.relay.kafka;

import java.util.HashMap;
import java.util.Map;

/**
 * The plugin's settings: broker properties prefixed {@code telemetry.relay.} (the broker hands
 * every server.properties entry to a metric reporter's configure). A bad value is reported and
 * its default used: a typo in a monitoring plugin must not keep the broker from starting.
 */
final class Settings {
    static final String PREFIX = "telemetry.relay.";
    static final String ADMIN_PREFIX = PREFIX + "admin.";

    final String endpoint;
    final String tokenFile;
    final long queueMaxBytes;
    final int timeoutMs;
    final int retries;
    final int retryBackoffMs;
    final long subscriptionCheckMs;
    final long defaultWindowMs;
    /** The Admin client's properties for the subscription check (telemetry.relay.admin.*, prefix removed). */
    final Map<String, Object> admin;
    final String problems;

    private Settings(Map<String, ?> configs) {
        StringBuilder bad = new StringBuilder();
        endpoint = string(configs, "endpoint", "http://127.0.0.1:4318/v1/metrics");
        tokenFile = string(configs, "token.file", null);
        queueMaxBytes = number(configs, "queue.max.bytes", 16L << 20, 1024, 1L << 31, bad);
        timeoutMs = (int) number(configs, "timeout.ms", 5000, 100, 120_000, bad);
        retries = (int) number(configs, "retries", 2, 0, 10, bad);
        retryBackoffMs = (int) number(configs, "retry.backoff.ms", 200, 0, 10_000, bad);
        subscriptionCheckMs = number(configs, "subscription.check.interval.ms", 30_000, 0, 86_400_000, bad);
        defaultWindowMs = number(configs, "clients.window.ms", 60_000, 100, 86_400_000, bad);
        admin = new HashMap<>();
        for (Map.Entry<String, ?> e : configs.entrySet()) {
            if (e.getKey().startsWith(ADMIN_PREFIX) && e.getValue() != null) {
                admin.put(e.getKey().substring(ADMIN_PREFIX.length()), e.getValue());
            }
        }
        problems = bad.toString();
    }

    static Settings from(Map<String, ?> configs) {
        return new Settings(configs == null ? Map.of() : configs);
    }

    static Settings defaults() {
        return new Settings(Map.of());
    }

    private static String string(Map<String, ?> configs, String key, String dflt) {
        Object v = configs.get(PREFIX + key);
        if (v == null) {
            return dflt;
        }
        String s = v.toString().trim();
        return s.isEmpty() ? dflt : s;
    }

    private static long number(Map<String, ?> configs, String key, long dflt, long min, long max, StringBuilder bad) {
        Object v = configs.get(PREFIX + key);
        if (v == null) {
            return dflt;
        }
        try {
            long n = Long.parseLong(v.toString().trim());
            if (n >= min && n <= max) {
                return n;
            }
        } catch (NumberFormatException e) {
            // reported below
        }
        bad.append(String.format("%s%s=%s is not a number from %d to %d, using %d; ", PREFIX, key, v, min, max, dflt));
        return dflt;
    }
}
