// A Java producer and consumer that push their metrics (KIP-714: kafka-clients push by default
// once the broker has a client-metrics subscription for them), for the client-metrics tests.
// The producer sends `rate` messages a second, each waited for (acks=all), and once a second
// prints the worst send-to-ack latency of that second:
//   latency t=<epoch ms> max_ms=<worst> sent=<acked in that second> failed=<errors>
// The consumer reads the same topic in its own group. Prints "clients ready" once the first
// send is acked. Runs until killed.
//
//   java -cp 'build/kafka/lib/*' Clients.java <bootstrap> <topic> <messages/s> <client id prefix>

import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.errors.TopicExistsException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Clients {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        String topic = args[1];
        int rate = Integer.parseInt(args[2]);
        String prefix = args[3];

        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(common)) {
            admin.createTopics(List.of(new NewTopic(topic, 2, (short) 1))).all().get(60, TimeUnit.SECONDS);
        } catch (java.util.concurrent.ExecutionException e) {
            if (!(e.getCause() instanceof TopicExistsException)) throw e;
        }

        Thread consumer = new Thread(() -> consume(bootstrap, topic, prefix), "consumer");
        consumer.setDaemon(true);
        consumer.start();

        Properties p = new Properties();
        p.putAll(common);
        p.put("client.id", prefix + "-producer");
        p.put("acks", "all");
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        p.put("delivery.timeout.ms", "30000");
        p.put("request.timeout.ms", "10000");
        byte[] value = new byte[200];
        long periodNs = TimeUnit.SECONDS.toNanos(1) / Math.max(rate, 1);
        boolean ready = false;
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            long windowStart = System.currentTimeMillis();
            long worst = 0;
            int sent = 0, failed = 0;
            long next = System.nanoTime();
            while (true) {
                long t0 = System.nanoTime();
                try {
                    producer.send(new ProducerRecord<>(topic, value)).get();
                    sent++;
                } catch (Exception e) {
                    failed++;
                }
                worst = Math.max(worst, System.nanoTime() - t0);
                if (!ready && sent > 0) {
                    System.out.println("clients ready");
                    System.out.flush();
                    ready = true;
                }
                long now = System.currentTimeMillis();
                if (now - windowStart >= 1000) {
                    System.out.printf("latency t=%d max_ms=%.3f sent=%d failed=%d%n", now, worst / 1e6, sent, failed);
                    System.out.flush();
                    windowStart = now;
                    worst = 0;
                    sent = 0;
                    failed = 0;
                }
                next += periodNs;
                long sleep = next - System.nanoTime();
                if (sleep > 0) {
                    TimeUnit.NANOSECONDS.sleep(sleep);
                } else {
                    next = System.nanoTime();
                }
            }
        }
    }

    static void consume(String bootstrap, String topic, String prefix) {
        Properties c = new Properties();
        c.put("bootstrap.servers", bootstrap);
        c.put("client.id", prefix + "-consumer");
        c.put("group.id", prefix + "-group");
        c.put("auto.offset.reset", "earliest");
        c.put("key.deserializer", ByteArrayDeserializer.class.getName());
        c.put("value.deserializer", ByteArrayDeserializer.class.getName());
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c)) {
            consumer.subscribe(List.of(topic));
            while (true) {
                consumer.poll(Duration.ofMillis(500));
            }
        }
    }
}
