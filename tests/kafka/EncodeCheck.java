// Runs the plugin's hand-encoded protobuf rewrite (OtlpResource) on a file, for the test that
// reads the result back with the real protobuf library. Exit 3: the input was refused.
//
//   java -cp <plugin jar>:<kafka-clients jar> EncodeCheck.java <in> <out> key=value...

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.LinkedHashMap;
import java.util.Map;

import telemetry.relay.kafka.OtlpResource;

public class EncodeCheck {
    public static void main(String[] args) throws Exception {
        Map<String, String> attrs = new LinkedHashMap<>();
        for (int i = 2; i < args.length; i++) {
            String[] kv = args[i].split("=", 2);
            attrs.put(kv[0], kv[1]);
        }
        byte[] in = Files.readAllBytes(Path.of(args[0]));
        try {
            Files.write(Path.of(args[1]), OtlpResource.addAttributes(in, OtlpResource.attributes(attrs), attrs.keySet()));
        } catch (IllegalArgumentException e) {
            System.out.println("refused: " + e.getMessage());
            System.exit(3);
        }
    }
}
