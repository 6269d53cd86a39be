"""The workers' stdout (the decision log of `--decision-log -`) copied to the parent's in whole
lines.

Several processes writing one pipe mix their lines once an entry is longer than the pipe's
atomic size (4096 bytes on Linux), and unbuffered output (PYTHONUNBUFFERED, as in the image)
writes every entry on its own. Each worker writes into a pipe of its own instead; a thread per
worker reads it and writes what it read up to its last newline in one go, under a lock shared
with the other workers' threads.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger("attrgate.workers")
CHUNK = 1 << 16


class LineRelay:
    def __init__(self, out_fd: int) -> None:
        self._out = out_fd
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._failed = False

    def follow(self, name: str) -> int:
        """A pipe for one worker's stdout: the write end to hand over (the caller closes it
        once the worker has it); copied until the worker closes it."""
        read_end, write_end = os.pipe()
        thread = threading.Thread(
            target=self._copy, args=(read_end,), name=f"attrgate-relay-{name}", daemon=True
        )
        thread.start()
        self._threads.append(thread)
        return write_end

    def join(self, timeout: float) -> None:
        """Wait for every worker's output to be copied (their pipes closed: they exited)."""
        for thread in self._threads:
            thread.join(timeout)

    def _copy(self, read_end: int) -> None:
        pending = b""
        try:
            while chunk := os.read(read_end, CHUNK):
                data = pending + chunk
                cut = data.rfind(b"\n") + 1
                if cut:
                    self._write(data[:cut])
                pending = data[cut:]
            if pending:  # a worker that died mid-line: what it wrote, ended
                self._write(pending + b"\n")
        finally:
            os.close(read_end)

    def _write(self, data: bytes) -> None:
        with self._lock:
            if self._failed:
                return  # keep reading: a worker blocked on a full pipe would stop serving
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(self._out, view) :]
            except OSError as exc:
                self._failed = True
                log.error("cannot write the workers' output (%s): dropping it from now", exc)
