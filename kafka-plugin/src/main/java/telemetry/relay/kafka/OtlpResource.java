package telemetry.relay.kafka;

import java.io.ByteArrayOutputStream;
import java.nio.ByteBuffer;
import java.nio.charset.StandardCharsets;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.Set;

/**
 * Adds resource attributes to serialized OTLP MetricsData (which is wire-identical to an
 * ExportMetricsServiceRequest) without a protobuf library: the broker gives us no runtime
 * dependency to lean on, and the wire format needed here is four messages deep at most.
 *
 * <p>Each ResourceMetrics is rewritten as: its Resource (the client's own attributes, minus any
 * whose key we set, and the Resource's other fields, then our attributes), its other fields
 * (schema URL) as they came, then its ScopeMetrics, byte for byte. Malformed input raises
 * IllegalArgumentException (the forwarder drops and counts it).
 */
public final class OtlpResource {
    // Field numbers (opentelemetry/proto/metrics/v1/metrics.proto, resource/v1, common/v1).
    private static final int METRICS_DATA_RESOURCE_METRICS = 1;
    private static final int RESOURCE_METRICS_RESOURCE = 1;
    private static final int RESOURCE_METRICS_SCOPE_METRICS = 2;
    private static final int RESOURCE_ATTRIBUTES = 1;
    private static final int KEY_VALUE_KEY = 1;
    private static final int KEY_VALUE_VALUE = 2;
    private static final int ANY_VALUE_STRING = 1;
    private static final int VARINT = 0, I64 = 1, LEN = 2, I32 = 5;

    private OtlpResource() {
    }

    /** The KeyValue fields (as Resource.attributes entries) for string attributes; null values are left out. */
    public static byte[] attributes(Map<String, String> attrs) {
        ByteArrayOutputStream out = new ByteArrayOutputStream(64 * attrs.size());
        for (Map.Entry<String, String> e : attrs.entrySet()) {
            if (e.getValue() == null) {
                continue;
            }
            byte[] key = e.getKey().getBytes(StandardCharsets.UTF_8);
            byte[] value = e.getValue().getBytes(StandardCharsets.UTF_8);
            ByteArrayOutputStream any = new ByteArrayOutputStream(value.length + 6);
            writeLen(any, ANY_VALUE_STRING, value, 0, value.length);
            byte[] anyBytes = any.toByteArray();
            ByteArrayOutputStream kv = new ByteArrayOutputStream(key.length + anyBytes.length + 12);
            writeLen(kv, KEY_VALUE_KEY, key, 0, key.length);
            writeLen(kv, KEY_VALUE_VALUE, anyBytes, 0, anyBytes.length);
            byte[] kvBytes = kv.toByteArray();
            writeLen(out, RESOURCE_ATTRIBUTES, kvBytes, 0, kvBytes.length);
        }
        return out.toByteArray();
    }

    /**
     * MetricsData with {@code extra} (from {@link #attributes}) in every ResourceMetrics' Resource.
     * ResourceMetrics that came with the same Resource and schema URL become one (their
     * ScopeMetrics concatenated, in order): the Java client sends one per metric, and the same
     * added attributes on each of eighty would make a push six times its size.
     */
    public static byte[] addAttributes(byte[] data, byte[] extra, Set<String> keys) {
        Map<ByteBuffer, ResourceGroup> groups = new LinkedHashMap<>();
        ByteArrayOutputStream tail = new ByteArrayOutputStream();
        Reader r = new Reader(data, 0, data.length);
        while (r.more()) {
            int start = r.pos;
            int tag = r.varint32();
            if (tag >>> 3 == METRICS_DATA_RESOURCE_METRICS && (tag & 7) == LEN) {
                int len = r.length();
                ResourceGroup rm = resourceMetrics(data, r.pos, len, keys);
                ResourceGroup into = groups.putIfAbsent(rm.key(), rm);
                if (into != null) {
                    into.scopes.write(rm.scopes.toByteArray(), 0, rm.scopes.size());
                }
                r.pos += len;
            } else {
                r.skip(tag);
                tail.write(data, start, r.pos - start);
            }
        }
        ByteArrayOutputStream out = new ByteArrayOutputStream(data.length + groups.size() * (extra.length + 16));
        for (ResourceGroup g : groups.values()) {
            byte[] rm = g.encode(extra);
            writeLen(out, METRICS_DATA_RESOURCE_METRICS, rm, 0, rm.length);
        }
        out.write(tail.toByteArray(), 0, tail.size());
        return out.toByteArray();
    }

    /** One ResourceMetrics taken apart: its Resource (less our keys), its other fields, its ScopeMetrics. */
    private record ResourceGroup(byte[] resource, byte[] rest, ByteArrayOutputStream scopes) {
        ByteBuffer key() {
            ByteBuffer k = ByteBuffer.allocate(4 + resource.length + rest.length);
            k.putInt(resource.length).put(resource).put(rest).flip();
            return k;
        }

        byte[] encode(byte[] extra) {
            ByteArrayOutputStream res = new ByteArrayOutputStream(resource.length + extra.length);
            res.write(resource, 0, resource.length);
            res.write(extra, 0, extra.length);
            byte[] resBytes = res.toByteArray();
            ByteArrayOutputStream out = new ByteArrayOutputStream(resBytes.length + rest.length + scopes.size() + 8);
            writeLen(out, RESOURCE_METRICS_RESOURCE, resBytes, 0, resBytes.length);
            out.write(rest, 0, rest.length);
            out.write(scopes.toByteArray(), 0, scopes.size());
            return out.toByteArray();
        }
    }

    private static ResourceGroup resourceMetrics(byte[] data, int off, int len, Set<String> keys) {
        ByteArrayOutputStream resource = new ByteArrayOutputStream(256);
        ByteArrayOutputStream rest = new ByteArrayOutputStream(64);
        ByteArrayOutputStream scopes = new ByteArrayOutputStream(len);
        Reader r = new Reader(data, off, len);
        while (r.more()) {
            int start = r.pos;
            int tag = r.varint32();
            if (tag >>> 3 == RESOURCE_METRICS_RESOURCE && (tag & 7) == LEN) {
                int rlen = r.length();
                // Several Resource fields merge into one (protobuf semantics): keep them all.
                resourceFields(data, r.pos, rlen, keys, resource);
                r.pos += rlen;
            } else {
                r.skip(tag);
                (tag >>> 3 == RESOURCE_METRICS_SCOPE_METRICS ? scopes : rest).write(data, start, r.pos - start);
            }
        }
        return new ResourceGroup(resource.toByteArray(), rest.toByteArray(), scopes);
    }

    /** The Resource's fields, less the attributes whose key is one of ours. */
    private static void resourceFields(byte[] data, int off, int len, Set<String> keys, ByteArrayOutputStream out) {
        Reader r = new Reader(data, off, len);
        while (r.more()) {
            int start = r.pos;
            int tag = r.varint32();
            if (tag >>> 3 == RESOURCE_ATTRIBUTES && (tag & 7) == LEN) {
                int kvLen = r.length();
                String key = key(data, r.pos, kvLen);
                r.pos += kvLen;
                if (key != null && keys.contains(key)) {
                    continue;
                }
            } else {
                r.skip(tag);
            }
            out.write(data, start, r.pos - start);
        }
    }

    private static String key(byte[] data, int off, int len) {
        Reader r = new Reader(data, off, len);
        while (r.more()) {
            int tag = r.varint32();
            if (tag >>> 3 == KEY_VALUE_KEY && (tag & 7) == LEN) {
                int klen = r.length();
                return new String(data, r.pos, klen, StandardCharsets.UTF_8);
            }
            r.skip(tag);
        }
        return null;
    }

    private static void writeLen(ByteArrayOutputStream out, int field, byte[] b, int off, int len) {
        writeVarint(out, (field << 3) | LEN);
        writeVarint(out, len);
        out.write(b, off, len);
    }

    private static void writeVarint(ByteArrayOutputStream out, long v) {
        while ((v & ~0x7FL) != 0) {
            out.write((int) ((v & 0x7F) | 0x80));
            v >>>= 7;
        }
        out.write((int) v);
    }

    /** A bounds-checked cursor over one message's bytes. */
    private static final class Reader {
        final byte[] b;
        final int end;
        int pos;

        Reader(byte[] b, int off, int len) {
            if (off < 0 || len < 0 || off + len > b.length) {
                throw new IllegalArgumentException("message runs past the buffer");
            }
            this.b = b;
            this.pos = off;
            this.end = off + len;
        }

        boolean more() {
            return pos < end;
        }

        long varint() {
            long v = 0;
            for (int shift = 0; shift < 64; shift += 7) {
                if (pos >= end) {
                    throw new IllegalArgumentException("truncated varint at " + pos);
                }
                byte x = b[pos++];
                v |= (long) (x & 0x7F) << shift;
                if (x >= 0) {
                    return v;
                }
            }
            throw new IllegalArgumentException("varint longer than 10 bytes at " + pos);
        }

        int varint32() {
            long v = varint();
            if (v < 0 || v > Integer.MAX_VALUE) {
                throw new IllegalArgumentException("tag out of range: " + v);
            }
            return (int) v;
        }

        int length() {
            long n = varint();
            if (n < 0 || n > end - pos) {
                throw new IllegalArgumentException("length " + n + " runs past the message at " + pos);
            }
            return (int) n;
        }

        void skip(int tag) {
            if (tag >>> 3 == 0) {
                throw new IllegalArgumentException("field number 0 at " + pos);
            }
            switch (tag & 7) {
                case VARINT -> varint();
                case I64 -> advance(8);
                case LEN -> advance(length());
                case I32 -> advance(4);
                default -> throw new IllegalArgumentException("unsupported wire type " + (tag & 7) + " at " + pos);
            }
        }

        private void advance(int n) {
            if (n > end - pos) {
                throw new IllegalArgumentException("field runs past the message at " + pos);
            }
            pos += n;
        }
    }
}
