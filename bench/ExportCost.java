// `make bench`: what the telemetry-relay plugin adds to a broker's request thread per client
// push. Calls ClientTelemetryExporter.exportMetrics on a realistic payload (a file the bench
// writes) in batches, beside a no-op exporter's call in the same run, batch for batch: the
// broker's real RequestContext (so the software name and version are read as on a broker),
// the plugin's sender thread running and POSTing to a sink in this JVM that answers 200.
// Between batches the plugin's queue is let drain, so every timed call takes the full path
// (copy and enqueue), never the cheaper queue-full one. Prints one JSON line.
//
//   java -cp <plugin jar>:<broker lib>/* ExportCost.java <payload file> <calls per batch> <batches>

import java.lang.management.ManagementFactory;
import java.net.InetAddress;
import java.net.InetSocketAddress;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.Map;

import javax.management.ObjectName;

import com.sun.net.httpserver.HttpServer;

import org.apache.kafka.common.Uuid;
import org.apache.kafka.common.network.ClientInformation;
import org.apache.kafka.common.network.ListenerName;
import org.apache.kafka.common.protocol.ApiKeys;
import org.apache.kafka.common.requests.RequestContext;
import org.apache.kafka.common.requests.RequestHeader;
import org.apache.kafka.common.security.auth.KafkaPrincipal;
import org.apache.kafka.common.security.auth.SecurityProtocol;
import org.apache.kafka.server.authorizer.AuthorizableRequestContext;
import org.apache.kafka.server.telemetry.ClientTelemetryContext;
import org.apache.kafka.server.telemetry.ClientTelemetryExporter;
import org.apache.kafka.server.telemetry.ClientTelemetryPayload;

import telemetry.relay.kafka.RelayTelemetryReporter;

public class ExportCost {
    public static void main(String[] args) throws Exception {
        byte[] data = Files.readAllBytes(Path.of(args[0]));
        int perBatch = Integer.parseInt(args[1]);
        int batches = Integer.parseInt(args[2]);

        HttpServer sink = HttpServer.create(new InetSocketAddress("127.0.0.1", 0), 64);
        sink.createContext("/v1/metrics", ex -> {
            ex.getRequestBody().readAllBytes();
            ex.sendResponseHeaders(200, -1);
            ex.close();
        });
        sink.start();

        RelayTelemetryReporter reporter = new RelayTelemetryReporter();
        reporter.configure(Map.of("telemetry.relay.endpoint",
                "http://127.0.0.1:" + sink.getAddress().getPort() + "/v1/metrics",
                "telemetry.relay.queue.max.bytes", String.valueOf(1L << 30),
                "telemetry.relay.subscription.check.interval.ms", "0", "node.id", "1"));
        ClientTelemetryExporter plugin = reporter.clientTelemetryExporter();
        ClientTelemetryExporter noop = (context, payload) -> { };

        RequestContext request = new RequestContext(
                new RequestHeader(ApiKeys.PUSH_TELEMETRY, ApiKeys.PUSH_TELEMETRY.latestVersion(), "orders-producer", 7),
                "127.0.0.1:9092-127.0.0.1:50000-0", InetAddress.getLoopbackAddress(),
                new KafkaPrincipal(KafkaPrincipal.USER_TYPE, "alice"), new ListenerName("PLAINTEXT"),
                SecurityProtocol.PLAINTEXT, new ClientInformation("apache-kafka-java", "4.4.0"), false);
        ClientTelemetryContext context = new ClientTelemetryContext() {
            public int pushIntervalMs() {
                return 60_000;
            }

            public AuthorizableRequestContext authorizableRequestContext() {
                return request;
            }
        };
        Uuid instance = Uuid.randomUuid();
        ClientTelemetryPayload payload = new ClientTelemetryPayload() {
            public Uuid clientInstanceId() {
                return instance;
            }

            public boolean isTerminating() {
                return false;
            }

            public String contentType() {
                return "application/x-protobuf";
            }

            public ByteBuffer data() {
                return ByteBuffer.wrap(data).asReadOnlyBuffer();  // as the broker hands it: a view of the request
            }
        };

        ObjectName bean = new ObjectName("telemetry.relay:type=ClientTelemetry");
        var server = ManagementFactory.getPlatformMBeanServer();
        // Warm-up: both paths JIT-compiled before anything is timed.
        for (int i = 0; i < 5; i++) {
            time(noop, context, payload, perBatch);
            time(plugin, context, payload, perBatch);
            drain(server, bean);
        }
        long[] pluginNs = new long[perBatch * batches];
        long[] noopNs = new long[perBatch * batches];
        for (int b = 0; b < batches; b++) {
            System.arraycopy(time(noop, context, payload, perBatch), 0, noopNs, b * perBatch, perBatch);
            System.arraycopy(time(plugin, context, payload, perBatch), 0, pluginNs, b * perBatch, perBatch);
            drain(server, bean);
        }
        long forwarded = (Long) server.getAttribute(bean, "Forwarded");
        long dropped = (Long) server.getAttribute(bean, "Dropped");
        reporter.close();
        sink.stop(0);
        System.out.printf("{\"payload_bytes\": %d, \"calls\": %d, \"plugin_ns_mean\": %.1f, \"plugin_ns_p50\": %d, "
                        + "\"plugin_ns_p99\": %d, \"noop_ns_mean\": %.1f, \"noop_ns_p50\": %d, \"noop_ns_p99\": %d, "
                        + "\"forwarded\": %d, \"dropped\": %d}%n",
                data.length, pluginNs.length, mean(pluginNs), pct(pluginNs, 50), pct(pluginNs, 99), mean(noopNs),
                pct(noopNs, 50), pct(noopNs, 99), forwarded, dropped);
    }

    static long[] time(ClientTelemetryExporter exporter, ClientTelemetryContext context,
                       ClientTelemetryPayload payload, int n) {
        long[] out = new long[n];
        for (int i = 0; i < n; i++) {
            long t0 = System.nanoTime();
            exporter.exportMetrics(context, payload);
            out[i] = System.nanoTime() - t0;
        }
        return out;
    }

    static void drain(javax.management.MBeanServer server, ObjectName bean) throws Exception {
        long deadline = System.nanoTime() + 120_000_000_000L;
        while ((Integer) server.getAttribute(bean, "QueueItems") > 0 && System.nanoTime() < deadline) {
            Thread.sleep(5);
        }
    }

    static double mean(long[] xs) {
        return Arrays.stream(xs).average().orElse(0);
    }

    static long pct(long[] xs, int p) {
        long[] s = xs.clone();
        Arrays.sort(s);
        return s[Math.min(s.length - 1, (int) (s.length * p / 100.0))];
    }
}
