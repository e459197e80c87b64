package telemetry.relay.kafka;

import java.lang.reflect.Field;
import java.lang.reflect.Method;
import java.net.InetAddress;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;

import org.apache.kafka.common.Uuid;
import org.apache.kafka.common.security.auth.KafkaPrincipal;
import org.apache.kafka.common.security.auth.SecurityProtocol;
import org.apache.kafka.server.authorizer.AuthorizableRequestContext;

/**
 * Who pushed: the resource attributes the payload itself does not carry. The client instance
 * id is on the payload; the client id, principal, listener, security protocol and address come
 * from the request context; the software name and version only from the broker's concrete
 * RequestContext (its public {@code clientInformation} field), reached by reflection and left
 * out when that is not there. Runs on the broker's request thread: no I/O, no lookups but a
 * cached reflective read.
 */
final class ClientIdentity {
    static final String INSTANCE_ID = "kafka.client.instance.id";
    static final String CLIENT_ID = "kafka.client.id";
    static final String SOFTWARE_NAME = "kafka.client.software.name";
    static final String SOFTWARE_VERSION = "kafka.client.software.version";
    static final String PRINCIPAL = "kafka.client.principal";
    static final String LISTENER = "kafka.client.listener";
    static final String SECURITY_PROTOCOL = "kafka.client.security.protocol";
    static final String ADDRESS = "kafka.client.address";
    static final String CLUSTER_ID = "kafka.cluster.id";
    static final String BROKER_ID = "kafka.broker.id";
    /** Every key this plugin sets: a client's own attribute of the same key is replaced. */
    static final Set<String> KEYS = Set.of(INSTANCE_ID, CLIENT_ID, SOFTWARE_NAME, SOFTWARE_VERSION, PRINCIPAL,
            LISTENER, SECURITY_PROTOCOL, ADDRESS, CLUSTER_ID, BROKER_ID);

    // The broker's RequestContext class and its ClientInformation accessors, looked up once.
    private static volatile Class<?> contextClass;
    private static volatile Field clientInformation;
    private static volatile Method softwareName;
    private static volatile Method softwareVersion;

    private ClientIdentity() {
    }

    /** The attributes of one push, in a stable order; absent facts are null (left out on the wire). */
    static Map<String, String> of(AuthorizableRequestContext ctx, Uuid instanceId, String clusterId, String brokerId) {
        Map<String, String> out = new LinkedHashMap<>(16);
        out.put(INSTANCE_ID, instanceId == null ? null : instanceId.toString());
        out.put(CLIENT_ID, ctx == null ? null : ctx.clientId());
        String[] software = software(ctx);
        out.put(SOFTWARE_NAME, software[0]);
        out.put(SOFTWARE_VERSION, software[1]);
        if (ctx != null) {
            KafkaPrincipal principal = ctx.principal();
            out.put(PRINCIPAL, principal == null ? null : principal.toString());
            out.put(LISTENER, ctx.listenerName());
            SecurityProtocol protocol = ctx.securityProtocol();
            out.put(SECURITY_PROTOCOL, protocol == null ? null : protocol.name);
            InetAddress address = ctx.clientAddress();
            out.put(ADDRESS, address == null ? null : address.getHostAddress());
        }
        out.put(CLUSTER_ID, clusterId);
        out.put(BROKER_ID, brokerId);
        return out;
    }

    /** {name, version} from the concrete context's ClientInformation; {null, null} when not reachable. */
    static String[] software(Object ctx) {
        if (ctx == null) {
            return new String[2];
        }
        try {
            Class<?> cls = ctx.getClass();
            if (cls != contextClass) {
                lookUp(cls);
            }
            Field f = clientInformation;
            if (f == null) {
                return new String[2];
            }
            Object info = f.get(ctx);
            if (info == null) {
                return new String[2];
            }
            return new String[]{known((String) softwareName.invoke(info)), known((String) softwareVersion.invoke(info))};
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            return new String[2];
        }
    }

    private static synchronized void lookUp(Class<?> cls) {
        Field f = null;
        Method name = null, version = null;
        try {
            f = cls.getField("clientInformation");
            name = f.getType().getMethod("softwareName");
            version = f.getType().getMethod("softwareVersion");
        } catch (ReflectiveOperationException | RuntimeException | LinkageError e) {
            f = null;  // another broker build: leave the software out rather than guess
        }
        clientInformation = f;
        softwareName = name;
        softwareVersion = version;
        contextClass = cls;
    }

    // ClientInformation says "unknown" when a client did not send ApiVersions' software fields.
    private static String known(String s) {
        return s == null || s.isEmpty() || "unknown".equals(s) ? null : s;
    }
}
