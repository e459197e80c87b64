package relaytest;

import com.sun.net.httpserver.HttpExchange;
import com.sun.net.httpserver.HttpServer;
import java.io.IOException;
import java.io.OutputStream;
import java.net.InetSocketAddress;
import java.nio.charset.StandardCharsets;
import java.util.HashMap;
import org.jolokia.backend.BackendManager;
import org.jolokia.config.Configuration;
import org.jolokia.http.HttpRequestHandler;
import org.jolokia.util.QuietLogHandler;

/** The real Jolokia protocol (Debian's libjolokia-core-java) behind the JDK's HTTP server. */
public final class JolokiaServer {
    private JolokiaServer() {}

    public static HttpServer start(int port) throws IOException {
        Configuration config = new Configuration(org.jolokia.config.ConfigKey.AGENT_ID, "relay-test");
        QuietLogHandler log = new QuietLogHandler();
        HttpRequestHandler handler = new HttpRequestHandler(config, new BackendManager(config, log), log);
        HttpServer server = HttpServer.create(new InetSocketAddress("127.0.0.1", port), 16);
        server.createContext("/jolokia", exchange -> serve(handler, exchange));
        server.start();
        return server;
    }

    private static void serve(HttpRequestHandler handler, HttpExchange exchange) throws IOException {
        String path = exchange.getRequestURI().getPath().substring("/jolokia".length());
        Object json;
        try {
            if ("POST".equals(exchange.getRequestMethod())) {
                json = handler.handlePostRequest(exchange.getRequestURI().toString(), exchange.getRequestBody(),
                        "UTF-8", new HashMap<>());
            } else {
                json = handler.handleGetRequest(exchange.getRequestURI().toString(), path, new HashMap<>());
            }
        } catch (Throwable t) {
            json = handler.handleThrowable(t);
        }
        byte[] body = json.toString().getBytes(StandardCharsets.UTF_8);
        exchange.getResponseHeaders().set("Content-Type", "application/json");
        exchange.sendResponseHeaders(200, body.length);
        try (OutputStream out = exchange.getResponseBody()) {
            out.write(body);
        }
    }
}
