package relaytest;

import java.lang.instrument.Instrumentation;

/** A -javaagent that serves Jolokia, the way operators attach the Jolokia JVM agent:
 *  -javaagent:agent.jar=port=8778,host=127.0.0.1 */
public final class Agent {
    private Agent() {}

    public static void premain(String args, Instrumentation inst) throws Exception {
        int port = 8778;
        for (String part : (args == null ? "" : args).split(",")) {
            String[] kv = part.split("=", 2);
            if (kv.length == 2 && kv[0].trim().equals("port")) {
                port = Integer.parseInt(kv[1].trim());
            }
        }
        JolokiaServer.start(port);
        System.out.println("jolokia agent listening on " + port);
    }
}
