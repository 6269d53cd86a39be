"""How a serving role (the stub, the bare gRPC server) knows to end."""

from __future__ import annotations

import asyncio
import signal
import sys


async def until_stopped(until_stdin_closes: bool) -> None:
    """Return on SIGTERM or SIGINT or, with `until_stdin_closes`, once stdin closes (the parent
    that started this process with a pipe on its stdin has ended)."""
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    watcher = None
    if until_stdin_closes:
        stdin = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
        watcher = asyncio.create_task(stdin.read())
        watcher.add_done_callback(lambda _: done.set())
    await done.wait()
    if watcher is not None:
        watcher.cancel()
