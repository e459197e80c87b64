"""A loopback TCP proxy that counts the bytes crossing it both ways, put in front of a receiver.

Counting at the socket is the one measure of "bytes on the wire" that treats every sender the
same: request line, headers, body and the answer, whatever the protocol (Prometheus
remote-write or OTLP/HTTP). While the receiver behind it is down, a connection is accepted
and closed at once, which a sender sees as a failed send and retries.
"""

from __future__ import annotations

import socket
import threading


class ByteCounter:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.sent = 0  # sender -> receiver
        self.received = 0  # receiver -> sender
        self._lock = threading.Lock()
        self._listen = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listen.getsockname()[1])
        self._stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def total(self) -> int:
        with self._lock:
            return self.sent + self.received

    def _accept(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listen.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, False), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, outbound: bool) -> None:
        try:
            while chunk := src.recv(65536):
                dst.sendall(chunk)
                with self._lock:
                    if outbound:
                        self.sent += len(chunk)
                    else:
                        self.received += len(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def stop(self) -> None:
        self._stopped = True
        self._listen.close()
