"""A TCP relay between the target and the source, that the move's replication goes through.

The plan's `source.replication_port` names the relay, so the subscription (and
pglogical's nodes) reach the source through it; everything else connects
directly. `cut()` ends every connection through it at once, as a network that
drops them; `stall(seconds)` holds every byte for a while, as one that stops
delivering without closing anything.
"""

import socket
import threading
import time
from contextlib import suppress


class Relay:
    """Listens on a loopback port and relays each connection to `upstream`."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._lock = threading.Lock()
        self._flowing = threading.Event()
        self._flowing.set()
        self.accepted = self.cuts = 0
        threading.Thread(target=self._accept, name="relay", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._pairs.append((client, server))
                self.accepted += 1
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                self._flowing.wait()
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                _close(end)

    def cut(self) -> None:
        """Every connection through the relay ended, both ways."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
            self.cuts += 1
        for pair in pairs:
            for end in pair:
                _close(end)

    def stall(self, seconds: float) -> None:
        """No byte passes for `seconds`; then all that waited goes on."""
        self._flowing.clear()
        try:
            time.sleep(seconds)
        finally:
            self._flowing.set()

    def close(self) -> None:
        self._listener.close()
        self.cut()


def _close(end: socket.socket) -> None:
    with suppress(OSError):
        end.shutdown(socket.SHUT_RDWR)
    end.close()
