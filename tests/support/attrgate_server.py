"""attrgate's real App (grpc.aio) on a loopback port, in a thread with its own event loop, so
tests can use plain synchronous gRPC clients."""

from __future__ import annotations

import asyncio
import io
import os
import threading
from dataclasses import replace
from typing import Any

import grpc

from attrgate.app import App
from attrgate.config import Settings
from attrgate.tasks import cancel_and_wait
from attrgate.v1 import attrgate_pb2_grpc as pb_grpc


class RunningServer:
    def __init__(self, settings: Settings, **app_options: Any) -> None:
        """`app_options`: App's fields for tests (e.g. shadow_reminder_period)."""
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.app = App(settings, io.StringIO(), **app_options)
        try:
            self.run(self.app.start())
        except BaseException:
            self.run(self.app.stop(0))
            self._close_loop()
            raise
        host = settings.listen.rpartition(":")[0]
        self.target = f"{host}:{self.app.port}"

    def run(self, coroutine: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def channel(self) -> grpc.Channel:
        return grpc.insecure_channel(self.target)

    def stub(self, channel: grpc.Channel) -> pb_grpc.UserAttributesStub:
        return pb_grpc.UserAttributesStub(channel)

    def stop(self, grace: float = 0.0) -> None:
        if self.loop.is_closed():
            return
        self.run(self.app.stop(grace))
        self._close_loop()

    def _close_loop(self) -> None:
        # As asyncio.run does: cancel what is left and let it run its cleanup.
        self.run(_cancel_remaining_tasks())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


async def _cancel_remaining_tasks() -> None:
    current = asyncio.current_task()
    await cancel_and_wait(t for t in asyncio.all_tasks() if t is not current)


def settings_for(**overrides: Any) -> Settings:
    base = Settings(
        listen="127.0.0.1:0",
        insecure=True,
        region="us-east-1",
        cognito_max_attempts=2,
        cognito_connect_timeout=1.0,
        cognito_read_timeout=3.0,
        grace=0.5,
        drain_delay=0.0,
        # Tests that read decisions name a file; the rest would print them among pytest's dots.
        decision_log=os.devnull,
        # Tests reload by calling app.reload() and count what it did: a watcher reloading the
        # same writes beside them would count twice. Tests of the watcher turn it on.
        policy_watch=False,
    )
    settings = replace(base, **overrides)
    sources = [p for p in (settings.policies, settings.candidate_policies) if p]
    if "policy_watch" not in overrides and all(p.startswith("s3://") for p in sources):
        settings = replace(settings, policy_watch=None)  # polled: the flag would be refused
    return settings
