"""A TCP relay on a fixed loopback port to another one, that can be cut (the port refuses
connections, open ones are dropped) and restored, or held (connections open, no byte through)
and released: a dependency unreachable or stalled for a while, then back with its state, as no
restart of an emulator can give."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from support.moto_cognito import free_port


class Relay:
    def __init__(self, target_port: int) -> None:
        self.port = free_port()
        self._target = target_port
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._open: set[socket.socket] = set()
        self._flowing = threading.Event()  # cleared: bytes wait in the relay (a stalled S3)
        self._flowing.set()
        self._trickle = 0.0  # seconds between two bytes toward the client; 0: full speed
        self.restore()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            if listener is not None:
                with contextlib.suppress(OSError):
                    listener.shutdown(socket.SHUT_RDWR)
                listener.close()
            for connection in self._open:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._open.clear()

    def hold(self) -> None:
        """Connections stay open, but no byte goes through until `release`: a dependency that
        accepts and then stalls."""
        self._flowing.clear()

    def release(self) -> None:
        self._flowing.set()
        self._trickle = 0.0

    def trickle(self, every: float) -> None:
        """Answers' bodies reach the client one byte every `every` seconds (their HTTP head at
        once) until `release`: a dependency that never stalls long enough for a read timeout,
        yet never finishes."""
        self._trickle = every

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # cut
            try:
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._open.update((client, upstream))
            for source, sink, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, answers), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                self._flowing.wait()
                if answers and self._trickle:
                    # An HTTP answer's head goes at once, its body a byte at a time.
                    head = data.find(b"\r\n\r\n") + 4 if b"\r\n\r\n" in data else 0
                    sink.sendall(data[:head])
                    for byte in data[head:]:
                        sink.sendall(bytes((byte,)))
                        time.sleep(self._trickle)
                    continue
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
