package telemetry.relay.kafka;

import java.util.Map;
import java.util.concurrent.ConcurrentLinkedQueue;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicLong;

/**
 * The pushes waiting for the sender, bounded in bytes. Lock-free: the broker's request threads
 * offer and never wait; a push that does not fit is refused at once (the caller drops and
 * counts it). A push's bytes stay counted until the sender is done with it, so the bound covers
 * the one in flight too.
 */
final class PushQueue {
    /** What one queued push costs beside its data (the object, its identity map). */
    static final int OVERHEAD = 512;

    /** One client's push, copied off the request thread's buffer. */
    record Push(byte[] data, Map<String, String> identity, long receivedMs) {
        long cost() {
            return (long) data.length + OVERHEAD;
        }
    }

    private final ConcurrentLinkedQueue<Push> items = new ConcurrentLinkedQueue<>();
    private final AtomicLong bytes = new AtomicLong();
    private final AtomicInteger size = new AtomicInteger();
    final long maxBytes;

    PushQueue(long maxBytes) {
        this.maxBytes = maxBytes;
    }

    /** Room for {@code cost} bytes, taken now; false (and nothing taken) when it does not fit. */
    boolean reserve(long cost) {
        while (true) {
            long now = bytes.get();
            if (now + cost > maxBytes) {
                return false;
            }
            if (bytes.compareAndSet(now, now + cost)) {
                return true;
            }
        }
    }

    /** Queues a push whose room was reserved. */
    void add(Push p) {
        items.add(p);
        size.incrementAndGet();
    }

    Push poll() {
        Push p = items.poll();
        if (p != null) {
            size.decrementAndGet();
        }
        return p;
    }

    /** Gives back the room of a push the sender is done with (or of one never queued). */
    void release(long cost) {
        bytes.addAndGet(-cost);
    }

    long bytes() {
        return bytes.get();
    }

    int size() {
        return size.get();
    }
}
