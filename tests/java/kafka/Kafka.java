package kafka;

/** Stands in for a broker: the main class a discovery looks for is kafka.Kafka.
 *  Arguments: config file (ignored, as a real broker's server.properties), topics, broker id. */
public final class Kafka {
    private Kafka() {}

    public static void main(String[] args) throws Exception {
        int topics = args.length > 1 ? Integer.parseInt(args[1]) : 3;
        int brokerId = args.length > 2 ? Integer.parseInt(args[2]) : 1;
        relaytest.KafkaBeans.registerAll(topics, brokerId, "lkc-test-cluster");
        System.out.println("fake broker ready");
        Thread.sleep(Long.MAX_VALUE);
    }
}
