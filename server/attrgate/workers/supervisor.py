"""The parent of `serve --workers N`: spawn, watch, relay signals, stop.

- Start: the listening ports are held (ports.py) and each worker is a fresh `python -m attrgate
  serve` (nothing of gRPC crosses a fork). All start at once, but workers 1..N-1 wait, once
  their imports are done, until worker 0 serves: a refusal (a bad policy set, no credentials)
  is said once, and the key beside a new --state is generated once. When every worker serves,
  their health turns SERVING (not before: a load balancer would pin its connections to the
  first) and the parent logs `serving on port ...`.
- Signals: SIGTERM and SIGINT go to every worker (a second one too: it ends their drain delay),
  SIGHUP to every worker (one still starting gets it once it serves), SIGQUIT too (each prints
  its threads' stacks, the parent its own).
- A worker that exits on its own, before a stop was asked for, stops the others (SIGTERM: they
  drain as usual) and the parent exits 1 (2 when worker 0 refused to start): the orchestrator
  restarts the whole server rather than one worker being replaced unseen.
- After a stop the parent exits 0 when every worker that served exited 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import faulthandler
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from attrgate.config import Settings, check
from attrgate.workers.child import GO, SERVE, WORKER_ENV, Ready, worker_environment
from attrgate.workers.ports import HeldPort, hold
from attrgate.workers.relay import LineRelay
from attrgate.workers.scrape import MetricsServer

log = logging.getLogger("attrgate.workers")
EXIT_FAILED = 1
EXIT_CONFIG = 2
RELAY_JOIN = 10.0  # seconds to copy the last output of workers that have exited


@dataclass
class Worker:
    index: int
    process: asyncio.subprocess.Process
    channel: asyncio.StreamWriter
    ready: Ready | None = None
    hup_pending: bool = False  # a SIGHUP that arrived while it started
    returncode: int | None = None

    def signal(self, signum: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def say(self, message: bytes) -> None:
        with contextlib.suppress(OSError):
            self.channel.write(message)

    def describe(self) -> str:
        return f"worker {self.index} (pid {self.process.pid})"


def supervise(settings: Settings) -> int:
    """Run the workers until a stop; the exit status. ConfigError: refused before any starts."""
    return asyncio.run(Supervisor(settings).run())


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._workers: list[Worker] = []
        self._events: asyncio.Queue[tuple[str, Worker | None]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._failure: int | None = None  # the exit status a worker's own exit imposes
        self._held: list[HeldPort] = []
        self._relay: LineRelay | None = None
        self._metrics: MetricsServer | None = None
        self._worker_settings = settings

    async def run(self) -> int:
        check(self._settings)
        try:
            self._prepare()
            self._install_signals()
            log.info("starting %d workers", self._settings.workers)
            for index in range(self._settings.workers):
                if not self._stopping:
                    await self._spawn(index)
            return await self._supervise()
        finally:
            await self._close()

    def _prepare(self) -> None:
        """Hold the ports, serve /metrics; what each worker gets instead of the parent's."""
        settings = self._settings
        main = hold(settings.listen)
        self._held.append(main)
        admin = hold(settings.admin_listen) if settings.admin_listen else None
        if admin is not None:
            self._held.append(admin)
        if settings.metrics_listen:
            self._metrics = MetricsServer(settings.metrics_listen, self._metrics_ports)
            self._metrics.start()
        if settings.decision_log == "-":
            self._relay = LineRelay(sys.stdout.fileno())
        self._worker_settings = dataclasses.replace(
            settings,
            listen=main.address,
            admin_listen=admin.address if admin is not None else None,
            # Each its own, on loopback: the parent's is the sum of theirs.
            metrics_listen="127.0.0.1:0" if self._metrics is not None else None,
        )

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._stop, signum)
        loop.add_signal_handler(signal.SIGHUP, self._hup)
        loop.add_signal_handler(signal.SIGQUIT, self._quit)

    async def _spawn(self, index: int) -> None:
        ours, theirs = socket.socketpair()
        stdout = self._relay.follow(str(index)) if self._relay is not None else None
        env = dict(os.environ)
        env[WORKER_ENV] = worker_environment(index, self._worker_settings, theirs.fileno())
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "attrgate",
                "serve",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout,
                pass_fds=(theirs.fileno(),),
                # Its own process group: a terminal's Ctrl-C reaches the parent only, which
                # relays it once (a second SIGINT would end the drain delay).
                process_group=0,
            )
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
            if stdout is not None:
                os.close(stdout)
        reader, writer = await asyncio.open_unix_connection(sock=ours)
        worker = Worker(index, process, writer)
        self._workers.append(worker)
        if self._stopping:  # a signal came while it was being started
            worker.signal(signal.SIGTERM)
        elif index and self._workers[0].ready is not None:
            worker.say(GO)
        self._follow(self._listen(worker, reader))
        self._follow(self._wait(worker))

    def _follow(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _listen(self, worker: Worker, reader: asyncio.StreamReader) -> None:
        """The worker's line when it serves. The channel stays open until the parent exits:
        its end tells the worker the parent is gone."""
        line = await reader.readline()
        if line:
            worker.ready = Ready.decode(line)
            self._events.put_nowait(("ready", worker))

    async def _wait(self, worker: Worker) -> None:
        worker.returncode = await worker.process.wait()
        self._events.put_nowait(("exit", worker))

    async def _supervise(self) -> int:
        while self._alive() or not self._events.empty():
            event, worker = await self._events.get()
            if worker is None:
                continue
            if event == "ready":
                self._ready(worker)
            elif event == "exit":
                self._exited(worker)
        failed = [w for w in self._workers if w.returncode and w.ready is not None]
        status = self._failure if self._failure is not None else EXIT_FAILED if failed else 0
        log.info("every worker has exited: exiting %d", status)
        return status

    def _ready(self, worker: Worker) -> None:
        if worker.hup_pending:
            worker.hup_pending = False
            worker.signal(signal.SIGHUP)
        if self._stopping:
            return
        if worker.index == 0:
            for other in self._workers[1:]:
                other.say(GO)
        if len(self._workers) == self._settings.workers and all(w.ready for w in self._workers):
            for each in self._workers:
                each.say(SERVE)  # their health turns SERVING
            self._serving()

    def _serving(self) -> None:
        settings = self._settings
        ready = [w.ready for w in self._workers if w.ready is not None]
        log.info(
            "serving on port %d with %d workers (pids %s)%s%s; policies %s revision %s",
            ready[0].port,
            len(ready),
            ", ".join(str(r.pid) for r in ready),
            f"; admin on port {ready[0].admin_port}" if settings.admin_listen else "",
            f"; metrics on port {self._metrics.port}" if self._metrics is not None else "",
            settings.policies,
            " and ".join(sorted({r.revision for r in ready})),
        )

    def _exited(self, worker: Worker) -> None:
        code = worker.returncode
        if self._stopping:
            if code and worker.ready is not None:
                log.error("%s exited %s while stopping", worker.describe(), _status(code))
            return
        if worker.ready is None and worker.index == 0 and code == EXIT_CONFIG:
            self._failure = EXIT_CONFIG  # its one-line refusal is on stderr already
        else:
            self._failure = EXIT_FAILED
            log.error(
                "%s exited %s: stopping the other workers (the server exits %d)",
                worker.describe(),
                _status(code),
                self._failure,
            )
        self._stopping = True
        self._relay_signal(signal.SIGTERM)

    def _alive(self) -> list[Worker]:
        return [w for w in self._workers if w.returncode is None]

    def _stop(self, signum: int) -> None:
        """SIGTERM, SIGINT: to every worker (a second one: they hurry)."""
        if not self._stopping:
            log.info(
                "%s: stopping %d workers (each drains: --drain-delay, --grace)",
                signal.Signals(signum).name,
                len(self._alive()),
            )
        self._stopping = True
        self._relay_signal(signum)

    def _hup(self) -> None:
        for worker in self._alive():
            if worker.ready is not None:
                worker.signal(signal.SIGHUP)
            else:
                worker.hup_pending = True  # its handler may not be in place yet

    def _quit(self) -> None:
        faulthandler.dump_traceback(all_threads=True)
        for worker in self._alive():
            if worker.ready is not None:  # before its handler, SIGQUIT would kill it
                worker.signal(signal.SIGQUIT)

    def _relay_signal(self, signum: int) -> None:
        for worker in self._alive():
            worker.signal(signum)

    def _metrics_ports(self) -> list[int] | None:
        """While every worker serves: their metrics ports."""
        ready = [w.ready for w in self._workers if w.ready is not None and w.returncode is None]
        if len(ready) < self._settings.workers:
            return None
        return [r.metrics_port for r in ready]

    async def _close(self) -> None:
        for worker in self._alive():  # the parent failed itself: no worker outlives it
            worker.signal(signal.SIGTERM)
        for worker in self._workers:
            await worker.process.wait()
            worker.channel.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._metrics is not None:
            self._metrics.close()
        if self._relay is not None:
            await asyncio.to_thread(self._relay.join, RELAY_JOIN)
        for held in self._held:
            held.close()


def _status(code: int | None) -> str:
    if code is not None and code < 0:
        return f"on {signal.Signals(-code).name}"
    return f"with status {code}"
