package telemetry.relay.kafka;

import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.atomic.AtomicLong;
import java.util.concurrent.atomic.AtomicLongArray;

/**
 * The plugin's counters: pushes received, forwarded and dropped by reason, the last error, and
 * which clients pushed lately. Every update is one atomic operation: request threads share it.
 */
final class Stats {
    /** Why a push did not reach the relay. */
    enum Drop {
        QUEUE_FULL, TOO_LARGE, UNREACHABLE, REJECTED, UNAVAILABLE, MALFORMED, ERROR, SHUTDOWN
    }

    /** Clients remembered for the pushed-lately count: bounded, client instance ids come from outside. */
    static final int MAX_CLIENTS = 100_000;

    final AtomicLong received = new AtomicLong();
    final AtomicLong forwarded = new AtomicLong();
    final AtomicLongArray dropped = new AtomicLongArray(Drop.values().length);
    final AtomicLong lastForwardTime = new AtomicLong();
    volatile int pushIntervalMs;
    private volatile String lastError = "";
    private volatile long lastErrorTime;
    private final ConcurrentHashMap<Object, Long> lastPush = new ConcurrentHashMap<>();

    void drop(Drop why, String error) {
        dropped.incrementAndGet(why.ordinal());
        if (error != null) {
            error(error);
        }
    }

    void error(String error) {
        lastError = error.length() > 500 ? error.substring(0, 500) : error;
        lastErrorTime = System.currentTimeMillis();
    }

    long dropped(Drop why) {
        return dropped.get(why.ordinal());
    }

    long droppedTotal() {
        long n = 0;
        for (int i = 0; i < dropped.length(); i++) {
            n += dropped.get(i);
        }
        return n;
    }

    String lastError() {
        return lastError;
    }

    long lastErrorTime() {
        return lastErrorTime;
    }

    void pushed(Object clientInstanceId, long nowMs) {
        if (clientInstanceId != null && (lastPush.size() < MAX_CLIENTS || lastPush.containsKey(clientInstanceId))) {
            lastPush.put(clientInstanceId, nowMs);
        }
    }

    /** Clients whose last push is within {@code windowMs}; forgets those quiet for twice as long. */
    int clientsWithin(long windowMs, long nowMs) {
        int n = 0;
        for (var it = lastPush.entrySet().iterator(); it.hasNext(); ) {
            long age = nowMs - it.next().getValue();
            if (age <= windowMs) {
                n++;
            } else if (age > 2 * windowMs) {
                it.remove();
            }
        }
        return n;
    }
}
