package telemetry.relay.kafka;

import java.io.IOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.nio.file.Path;
import java.time.Duration;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.locks.LockSupport;

/**
 * The daemon thread that takes pushes off the queue, adds the client's identity to their
 * resources (OtlpResource: here, not on the request thread) and POSTs each to the relay's
 * OTLP/HTTP receiver, with the bearer token read from a file (again when the file changes).
 * A failed POST is retried briefly (a connection error, 429 or 5xx), then the push is dropped
 * and counted; a 4xx other than 429 is the relay refusing that push, so it is dropped at once.
 */
final class Sender implements Runnable {
    private static final long IDLE_PARK_NS = TimeUnit.MILLISECONDS.toNanos(200);

    private final Settings settings;
    private final PushQueue queue;
    private final Stats stats;
    private final URI endpoint;
    private final HttpClient http;
    private volatile boolean running = true;
    private volatile Thread thread;
    private String token;
    private long tokenModified = Long.MIN_VALUE;

    Sender(Settings settings, PushQueue queue, Stats stats) {
        this.settings = settings;
        this.queue = queue;
        this.stats = stats;
        this.endpoint = URI.create(settings.endpoint);
        this.http = HttpClient.newBuilder()
                .version(HttpClient.Version.HTTP_1_1)
                .connectTimeout(Duration.ofMillis(settings.timeoutMs))
                .build();
    }

    void start() {
        Thread t = new Thread(this, "telemetry-relay-client-metrics");
        t.setDaemon(true);
        thread = t;
        t.start();
    }

    /** Wakes the thread for a new push; never blocks. */
    void wake() {
        Thread t = thread;
        if (t != null) {
            LockSupport.unpark(t);
        }
    }

    /** Stops the thread: what it has not sent by {@code graceMs} is dropped and counted. */
    void stop(long graceMs) {
        long deadline = System.nanoTime() + TimeUnit.MILLISECONDS.toNanos(graceMs);
        while (queue.size() > 0 && System.nanoTime() < deadline) {
            LockSupport.parkNanos(TimeUnit.MILLISECONDS.toNanos(20));
        }
        running = false;
        Thread t = thread;
        if (t != null) {
            t.interrupt();
            try {
                t.join(Math.max(graceMs, 1000));
            } catch (InterruptedException e) {
                Thread.currentThread().interrupt();
            }
        }
        for (PushQueue.Push p; (p = queue.poll()) != null; ) {
            queue.release(p.cost());
            stats.drop(Stats.Drop.SHUTDOWN, null);
        }
    }

    @Override
    public void run() {
        while (running) {
            PushQueue.Push p = queue.poll();
            if (p == null) {
                LockSupport.parkNanos(IDLE_PARK_NS);
                continue;
            }
            try {
                forward(p);
            } catch (InterruptedException e) {  // stop(): the broker shuts down
                stats.drop(Stats.Drop.SHUTDOWN, null);
            } catch (Throwable t) {  // this thread must outlive any one push
                stats.drop(Stats.Drop.ERROR, "internal error: " + t);
            } finally {
                queue.release(p.cost());
            }
        }
    }

    private void forward(PushQueue.Push p) throws InterruptedException {
        byte[] body;
        try {
            body = OtlpResource.addAttributes(p.data(), OtlpResource.attributes(p.identity()), ClientIdentity.KEYS);
        } catch (IllegalArgumentException e) {
            stats.drop(Stats.Drop.MALFORMED, "a push from client " + p.identity().get(ClientIdentity.INSTANCE_ID)
                    + " is not OTLP metrics: " + e.getMessage());
            return;
        }
        String failure = null;
        Stats.Drop reason = Stats.Drop.UNREACHABLE;
        for (int attempt = 0; attempt <= settings.retries && running; attempt++) {
            if (attempt > 0) {
                Thread.sleep((long) settings.retryBackoffMs << (attempt - 1));
            }
            try {
                HttpResponse<byte[]> resp = http.send(request(body), HttpResponse.BodyHandlers.ofByteArray());
                int status = resp.statusCode();
                if (status / 100 == 2) {
                    stats.forwarded.incrementAndGet();
                    stats.lastForwardTime.set(System.currentTimeMillis());
                    return;
                }
                failure = "HTTP " + status + " from " + endpoint + ": " + excerpt(resp.body());
                if (status != 429 && status / 100 == 4) {
                    stats.drop(Stats.Drop.REJECTED, failure);
                    return;
                }
                reason = Stats.Drop.UNAVAILABLE;
            } catch (IOException e) {
                failure = "cannot reach " + endpoint + ": " + e;
                reason = Stats.Drop.UNREACHABLE;
            }
        }
        stats.drop(running ? reason : Stats.Drop.SHUTDOWN, failure);
    }

    private HttpRequest request(byte[] body) {
        HttpRequest.Builder b = HttpRequest.newBuilder(endpoint)
                .timeout(Duration.ofMillis(settings.timeoutMs))
                .header("Content-Type", "application/x-protobuf")
                .header("User-Agent", "telemetry-relay-kafka-plugin/" + Forwarder.VERSION)
                .POST(HttpRequest.BodyPublishers.ofByteArray(body));
        String t = token();
        if (t != null) {
            b.header("Authorization", "Bearer " + t);
        }
        return b.build();
    }

    /** The bearer token, re-read when its file changes (a rotated token needs no broker restart). */
    private String token() {
        if (settings.tokenFile == null) {
            return null;
        }
        Path path = Path.of(settings.tokenFile);
        try {
            long modified = Files.getLastModifiedTime(path).toMillis();
            if (modified != tokenModified) {
                String t = Files.readString(path, StandardCharsets.UTF_8).trim();
                token = t.isEmpty() ? null : t;
                tokenModified = modified;
            }
        } catch (IOException e) {
            stats.error("cannot read the token file " + settings.tokenFile + ": " + e.getClass().getSimpleName());
        }
        return token;
    }

    private static String excerpt(byte[] body) {
        if (body == null || body.length == 0) {
            return "(empty body)";
        }
        // The receiver's error is a google.rpc.Status: its message is readable text inside.
        String s = new String(body, 0, Math.min(body.length, 200), StandardCharsets.UTF_8);
        return s.replaceAll("[^\\x20-\\x7e]", " ").trim();
    }
}
