"""A TCP proxy that tests put between Veil and a real service (moto_server, Redis) to cut it.

``cut()`` resets every open connection and answers new ones with a reset until ``restore()``:
to a client that is an endpoint gone away (connection reset / refused), which is what an S3 or
Redis outage looks like from a worker. The proxy listens on 127.0.0.1 only.

``partition()`` is a network partition instead: nothing is reset or closed, bytes just stop.
Open connections stay open (half-open: no RST, no FIN) but the proxy reads from neither side,
so each peer's writes sit in kernel buffers and its reads see silence; a close by either peer is
not passed on either. A new connection completes its handshake (the kernel's listen backlog)
but is not served. ``heal()`` lets everything flow again: bytes held during the partition are
delivered (as TCP's retransmissions would, within their timeout), held connections are served.

``latency_s`` delays the first chunk of each burst forwarded from client to server (a new
request; the rest of a body streamed right behind it is not delayed again), so every request
pays about that much more, as against a distant S3 (``benchmarks/scale.py``: 15 ms).
"""

from __future__ import annotations

import socket
import struct
import threading
import time


def _reset(sock: socket.socket) -> None:
    """Close with RST rather than FIN (SO_LINGER 0), as a dead peer does. ``SHUT_RD`` first: a
    ``close`` alone leaves the socket alive while another thread is blocked in ``recv`` on it
    (Linux keeps it until that call returns), so a request in flight hung until its timeout."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)  # wakes the pipe thread's recv without sending a FIN
    except OSError:
        pass
    sock.close()


class TcpProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1", latency_s: float = 0.0):
        self.target = (target_host, target_port)
        self.latency_s = latency_s
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._up = threading.Event()
        self._up.set()
        self._flowing = threading.Event()  # cleared by partition(): nothing read, nothing sent
        self._flowing.set()
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        self.connections = 0  # accepted while up, for tests that check traffic went through
        self.bytes_down = 0  # bytes the service sent back through the proxy
        #: called with each chunk a client sends, before it is forwarded: a test counts requests
        #: with it, or cuts at a chosen request (``cut()`` from inside drops that chunk)
        self.on_request = None
        threading.Thread(target=self._accept_loop, name="tcpproxy-accept", daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def partition(self) -> None:
        """From now on no byte crosses the proxy, and no connection is closed or reset."""
        self._flowing.clear()

    def heal(self) -> None:
        self._flowing.set()

    @property
    def partitioned(self) -> bool:
        return not self._flowing.is_set()

    def cut(self) -> None:
        self._up.clear()
        with self._lock:
            for sock in list(self._open):
                _reset(sock)
            self._open.clear()
        # then pipes held by a partition wake up and find their sockets reset (woken first, one
        # could forward the bytes it held before its socket was reset)
        self._flowing.set()

    def restore(self) -> None:
        self._up.set()

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._listener.close()

    def __enter__(self) -> "TcpProxy":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._flowing.wait()  # partitioned: served once healed; later ones wait in the backlog
            if not self._up.is_set() or self._closed:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            upstream.settimeout(None)
            self.connections += 1
            with self._lock:
                self._open.update((client, upstream))
            for a, b, down in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(target=self._pipe, args=(a, b, down), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, down: bool) -> None:
        try:
            last = 0.0
            while True:
                self._flowing.wait()  # partitioned: read nothing, so the peer's bytes stay put
                data = src.recv(65536)
                self._flowing.wait()  # read (or EOF) just as a partition began: held until it heals
                if not data:
                    break
                if self.latency_s and not down and time.monotonic() - last > self.latency_s:
                    time.sleep(self.latency_s)  # a new request (not the rest of a body being streamed)
                last = time.monotonic()
                if not down and self.on_request is not None:
                    self.on_request(data)
                    if not self._up.is_set():
                        break
                dst.sendall(data)
                if down:
                    self.bytes_down += len(data)
        except OSError:
            pass
        finally:
            self._flowing.wait()  # a reset or close seen during a partition is passed on after it
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()
