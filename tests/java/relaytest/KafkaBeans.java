package relaytest;

import java.lang.management.ManagementFactory;
import javax.management.MBeanServer;
import javax.management.ObjectName;

/** MBeans named and shaped like a Kafka broker's (Yammer meters, gauges and timers). */
public final class KafkaBeans {
    private KafkaBeans() {}

    public interface MeterMBean {
        long getCount();
        double getOneMinuteRate();
        double getFiveMinuteRate();
        double getFifteenMinuteRate();
        double getMeanRate();
        String getEventType();
        String getRateUnit();
    }

    public interface GaugeMBean {
        Object getValue();
    }

    public interface TimerMBean {
        long getCount();
        double getMean();
        double getMax();
        double get50thPercentile();
        double get99thPercentile();
        double get999thPercentile();
    }

    public interface AppInfoMBean {
        String getVersion();
        String getCommitId();
    }

    public static final class Meter implements MeterMBean {
        private final long count;
        Meter(long count) { this.count = count; }
        public long getCount() { return count; }
        public double getOneMinuteRate() { return count / 60.0; }
        public double getFiveMinuteRate() { return count / 300.0; }
        public double getFifteenMinuteRate() { return count / 900.0; }
        public double getMeanRate() { return count / 1000.0; }
        public String getEventType() { return "messages"; }
        public String getRateUnit() { return "SECONDS"; }
    }

    public static final class Gauge implements GaugeMBean {
        private final Object value;
        Gauge(Object value) { this.value = value; }
        public Object getValue() { return value; }
    }

    public static final class Timer implements TimerMBean {
        private final long count;
        Timer(long count) { this.count = count; }
        public long getCount() { return count; }
        public double getMean() { return 2.5; }
        public double getMax() { return 40.0; }
        public double get50thPercentile() { return 1.5; }
        public double get99thPercentile() { return 12.0; }
        public double get999thPercentile() { return 30.0; }
    }

    public static final class AppInfo implements AppInfoMBean {
        public String getVersion() { return "3.7.0"; }
        public String getCommitId() { return "2ae524ed625438c5"; }
    }

    private static void register(MBeanServer s, Object bean, String name) throws Exception {
        s.registerMBean(bean, new ObjectName(name));
    }

    /** Topic i gets MessagesInPerSec count 1000*(i+1), BytesIn 10x that, BytesOut 20x. */
    public static void registerAll(int topics, int brokerId, String clusterId) throws Exception {
        MBeanServer s = ManagementFactory.getPlatformMBeanServer();
        long all = 0;
        for (int i = 0; i < topics; i++) {
            String t = "topic-" + i;
            long n = 1000L * (i + 1);
            all += n;
            register(s, new Meter(n), "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec,topic=" + t);
            register(s, new Meter(n * 10), "kafka.server:type=BrokerTopicMetrics,name=BytesInPerSec,topic=" + t);
            register(s, new Meter(n * 20), "kafka.server:type=BrokerTopicMetrics,name=BytesOutPerSec,topic=" + t);
        }
        register(s, new Meter(all), "kafka.server:type=BrokerTopicMetrics,name=MessagesInPerSec");
        register(s, new Meter(all * 10), "kafka.server:type=BrokerTopicMetrics,name=BytesInPerSec");
        register(s, new Meter(all * 20), "kafka.server:type=BrokerTopicMetrics,name=BytesOutPerSec");
        register(s, new Meter(500), "kafka.server:type=BrokerTopicMetrics,name=TotalProduceRequestsPerSec");
        register(s, new Meter(700), "kafka.server:type=BrokerTopicMetrics,name=TotalFetchRequestsPerSec");
        register(s, new Meter(3), "kafka.server:type=BrokerTopicMetrics,name=FailedProduceRequestsPerSec");
        register(s, new Meter(4), "kafka.server:type=BrokerTopicMetrics,name=FailedFetchRequestsPerSec");
        register(s, new Gauge(2), "kafka.server:type=ReplicaManager,name=UnderReplicatedPartitions");
        register(s, new Gauge(42), "kafka.server:type=ReplicaManager,name=PartitionCount");
        register(s, new Meter(5), "kafka.server:type=ReplicaManager,name=IsrShrinksPerSec");
        register(s, new Meter(6), "kafka.server:type=ReplicaManager,name=IsrExpandsPerSec");
        register(s, new Gauge(17L), "kafka.server:type=ReplicaFetcherManager,name=MaxLag,clientId=Replica");
        register(s, new Gauge(1), "kafka.controller:type=KafkaController,name=ActiveControllerCount");
        register(s, new Gauge(0), "kafka.controller:type=KafkaController,name=OfflinePartitionsCount");
        register(s, new Timer(9), "kafka.controller:type=ControllerStats,name=LeaderElectionRateAndTimeMs");
        register(s, new Meter(0), "kafka.controller:type=ControllerStats,name=UncleanLeaderElectionsPerSec");
        register(s, new Gauge(3), "kafka.network:type=RequestChannel,name=RequestQueueSize");
        for (String req : new String[] {"Produce", "FetchConsumer", "FetchFollower"}) {
            register(s, new Timer(100), "kafka.network:type=RequestMetrics,name=TotalTimeMs,request=" + req);
        }
        for (String op : new String[] {"Produce", "Fetch"}) {
            register(s, new Gauge(7), "kafka.server:type=DelayedOperationPurgatory,name=PurgatorySize,delayedOperation=" + op);
        }
        register(s, new Timer(11), "kafka.log:type=LogFlushStats,name=LogFlushRateAndTimeMs");
        register(s, new Gauge(clusterId), "kafka.server:type=KafkaServer,name=ClusterId");
        register(s, new AppInfo(), "kafka.server:type=app-info,id=" + brokerId);
    }
}
