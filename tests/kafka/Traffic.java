// Real traffic for a test broker, in one JVM (run by the java source launcher, on the
// broker's own classpath): creates the topics, then produces to every partition at a steady
// rate while a consumer group reads one topic in three (the rest it never reads, so the
// group has lag), and once a second sends traffic-rejects (compacted, 1 KiB messages at most)
// a batch too large (rejected bytes) and a record without a key (a failed produce request:
// a compacted topic refuses it). Prints "traffic ready"
// once the topics exist and the first sends are acked.
// Runs until killed.
//
//   java -cp 'build/kafka/lib/*' Traffic.java <bootstrap> <topics> <partitions> <messages/s>

import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.Map;
import java.util.Properties;
import java.util.concurrent.TimeUnit;

import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.NewTopic;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class Traffic {
    public static void main(String[] args) throws Exception {
        String bootstrap = args[0];
        int topics = Integer.parseInt(args[1]);
        int partitions = Integer.parseInt(args[2]);
        int rate = Integer.parseInt(args[3]);

        List<String> names = new ArrayList<>();
        List<NewTopic> wanted = new ArrayList<>();
        for (int i = 0; i < topics; i++) {
            names.add("traffic-" + i);
            wanted.add(new NewTopic("traffic-" + i, partitions, (short) 1));
        }
        wanted.add(new NewTopic("traffic-rejects", 1, (short) 1).configs(Map.of("max.message.bytes", "1024", "cleanup.policy", "compact")));
        Properties common = new Properties();
        common.put("bootstrap.servers", bootstrap);
        try (Admin admin = Admin.create(common)) {
            // Created in batches: one request for 200 topics can outlast the request timeout.
            for (int i = 0; i < wanted.size(); i += 50) {
                admin.createTopics(wanted.subList(i, Math.min(i + 50, wanted.size()))).all().get(120, TimeUnit.SECONDS);
            }
        }

        List<String> read = new ArrayList<>();
        for (int i = 0; i < names.size(); i += 3) read.add(names.get(i));
        Thread consumer = new Thread(() -> consume(bootstrap, read), "consumer");
        consumer.setDaemon(true);
        consumer.start();

        Properties p = new Properties();
        p.putAll(common);
        p.put("acks", "all");
        p.put("linger.ms", "20");
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        byte[] value = new byte[200];
        byte[] tooLarge = new byte[4096];
        try (KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p)) {
            for (String t : names) for (int part = 0; part < partitions; part++) {
                producer.send(new ProducerRecord<>(t, part, null, value));
            }
            producer.flush();
            System.out.println("traffic ready");
            System.out.flush();
            long sent = 0;
            long start = System.nanoTime();
            int slot = 0;
            int slots = topics * partitions;
            long lastReject = 0;
            while (true) {
                // Paced by the clock, so the rate holds whatever the sends cost.
                long due = (long) ((System.nanoTime() - start) / 1e9 * rate);
                for (; sent < due; sent++, slot = (slot + 1) % slots) {
                    producer.send(new ProducerRecord<>(names.get(slot / partitions), slot % partitions, null, value));
                }
                if (System.nanoTime() - lastReject > 1_000_000_000L) {
                    producer.send(new ProducerRecord<>("traffic-rejects", "k".getBytes(), tooLarge));
                    producer.send(new ProducerRecord<>("traffic-rejects", value));
                    lastReject = System.nanoTime();
                }
                Thread.sleep(20);
            }
        }
    }

    static void consume(String bootstrap, List<String> topics) {
        Properties c = new Properties();
        c.put("bootstrap.servers", bootstrap);
        c.put("group.id", "traffic-readers");
        c.put("auto.offset.reset", "earliest");
        c.put("key.deserializer", ByteArrayDeserializer.class.getName());
        c.put("value.deserializer", ByteArrayDeserializer.class.getName());
        try (KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c)) {
            consumer.subscribe(topics);
            while (true) consumer.poll(Duration.ofMillis(500));
        }
    }
}
