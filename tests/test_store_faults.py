"""A state store that never fails open, proven on a real `attrgate serve` process against moto's
Cognito (signatures checked): its SQLite files truncated, overwritten, locked or deleted while it
serves. The process stays alive, writes that send no SMS go on, SMS-triggering writes answer
UNAVAILABLE SMS_STORE_UNAVAILABLE, and the failure shows in the log (rate-limited), the metrics
and the health service `attrgate.SmsStore`; a restart that finds the counts gone says so."""

from __future__ import annotations

import contextlib
import itertools
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from support.moto_cognito import MotoCognito, free_port
from support.policies import sms_guard, svc_policy
from support.prometheus import metrics_text, samples_of, total
from support.redis_server import RedisServer
from support.rpc import attrs_request, outcome, update
from support.served import start_serve, stop_serve, wait_serving
from support.waiting import wait_until

POLICIES = svc_policy("[{attribute: phone_number}, {attribute: given_name}]") + sms_guard(
    "limits:\n  - {per: global, max: 100, window: 1h}"
)
OK = ("OK", "")
STORE_DOWN = ("UNAVAILABLE", "SMS_STORE_UNAVAILABLE")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
_numbers = itertools.count(100)


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    metrics_port: int
    output: Path
    pool: str
    last_sent: str = ""  # the phone number of the last SMS write answered OK

    def update(self, pairs: list[tuple[str, str]]) -> tuple[str, str]:
        answer = update(f"127.0.0.1:{self.port}", attrs_request(self.pool, pairs), timeout=20)
        if isinstance(answer, grpc.RpcError) and outcome(answer) == ("UNAVAILABLE", ""):
            with contextlib.suppress(subprocess.TimeoutExpired):  # no details: it died?
                status = self.process.wait(timeout=5)
                raise AssertionError(f"attrgate serve died: exit status {status}")
        return outcome(answer)

    def sms_write(self) -> tuple[str, str]:
        number = f"+1415555{next(_numbers):04d}"
        outcome = self.update([("phone_number", number)])
        if outcome == OK:
            self.last_sent = number
        return outcome

    def plain_write(self) -> tuple[str, str]:
        return self.update([("given_name", "Ada")])

    def health(self, service: str) -> int:
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            return int(reply.status)

    def err(self) -> str:
        return (self.output / "err").read_text(errors="replace")

    def metric(self, name: str, **labels: str) -> float:
        return total(samples_of(metrics_text(self.metrics_port)).get(name, []), **labels)

    def alive(self) -> bool:
        return self.process.poll() is None


@pytest.fixture
def sms_pool(moto: MotoCognito) -> str:
    """A pool that auto-verifies phone numbers (writing one sends an SMS), with user ada."""
    pool = moto.create_pool(name="faults", AutoVerifiedAttributes=["phone_number"])
    moto.create_user(pool, "ada")
    return pool


@contextlib.contextmanager
def serving_against(
    moto: MotoCognito, pool: str, folder: Path, *flags: str, store_timeout: str = "1"
) -> Iterator[Served]:
    """`attrgate serve` on moto with the SmsGuard POLICIES, until SERVING; stopped after.
    The store timeout comes through its variable (an attrgate without the flag ignores it)."""
    found = launch(moto, pool, folder, *flags, store_timeout=store_timeout)
    try:
        assert wait_serving(f"127.0.0.1:{found.port}", found.process, 60), found.err()
        yield found
    finally:
        stop_serve(found.process)


def launch(
    moto: MotoCognito, pool: str, folder: Path, *flags: str, store_timeout: str = "1"
) -> Served:
    """`attrgate serve` as serving_against starts it, not waited for."""
    (folder / "policies.yaml").write_text(POLICIES)
    port, metrics_port = free_port(), free_port()
    process = start_serve(
        folder / "policies.yaml",
        port,
        *("--metrics-listen", f"127.0.0.1:{metrics_port}", "--decision-log", os.devnull),
        *("--cognito-endpoint", moto.endpoint, *flags),
        output=folder,
        ATTRGATE_STORE_TIMEOUT=store_timeout,
        AWS_ACCESS_KEY_ID=moto.attrgate_keys.access_key_id,
        AWS_SECRET_ACCESS_KEY=moto.attrgate_keys.secret_access_key,
    )
    return Served(process, port, metrics_port, folder, pool)


@pytest.fixture
def served(moto: MotoCognito, sms_pool: str, tmp_path: Path) -> Iterator[Served]:
    with serving_against(
        moto, sms_pool, tmp_path, "--state", str(tmp_path / "state.sqlite")
    ) as found:
        yield found


def state_files(folder: Path) -> list[Path]:
    """What `ls state.sqlite*` lists: the database and its journal (and -wal, -shm in WAL mode)."""
    return sorted(folder.glob("state.sqlite*"))


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "locked"])
def test_a_damaged_state_stops_sms_writes_only(served: Served, damage: str) -> None:
    assert served.sms_write() == OK
    holder = None
    if damage == "locked":  # another process holds the file (a stuck `sms usage`, a backup)
        holder = sqlite3.connect(served.output / "state.sqlite", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")
    else:
        for path in state_files(served.output):
            # WAL's -shm among them: mapped into memory, a truncated one was SIGBUS
            with path.open("r+b") as f:
                if damage == "truncated":
                    f.truncate(0)
                else:
                    f.write(b"\xa5" * 8192)
    try:
        assert served.sms_write() == STORE_DOWN
        assert served.alive(), served.err()
        assert served.plain_write() == OK
        assert served.health("") == SERVING
        assert wait_until(lambda: served.health("attrgate.SmsStore") == NOT_SERVING, 10)
        assert served.metric("attrgate_sms_store_up") == 0
    finally:
        if holder is not None:
            holder.execute("ROLLBACK")
            holder.close()
    if damage == "locked":  # the lock gone, the store answers again
        assert wait_until(lambda: served.health("attrgate.SmsStore") == SERVING, 10)
        assert served.sms_write() == OK
        assert served.metric("attrgate_sms_store_failures_total", reason="locked") >= 1
    assert served.alive(), served.err()


def test_a_deleted_state_is_refused_logged_measured_and_reported(
    served: Served, moto: MotoCognito
) -> None:
    assert served.sms_write() == OK
    for path in state_files(served.output):  # rm state.sqlite*
        path.unlink()

    outcomes = [served.sms_write() for _ in range(5)]
    assert outcomes == [STORE_DOWN] * 5, "SMS writes counted into a deleted file"
    assert served.plain_write() == OK
    # None of the refused numbers reached Cognito: the user still has the last one sent.
    assert moto.attributes(served.pool, "ada")["phone_number"] == served.last_sent
    assert not (served.output / "state.sqlite").exists(), "the state was recreated from zero"
    assert served.health("") == SERVING
    assert wait_until(lambda: served.health("attrgate.SmsStore") == NOT_SERVING, 10)
    assert served.metric("attrgate_sms_store_failures_total", reason="file_gone") >= 5
    assert served.metric("attrgate_sms_store_up") == 0
    # one ERROR line a minute, not one per request
    logged = [line for line in served.err().splitlines() if "was deleted" in line]
    assert len(logged) == 1, logged
    assert "ERROR" in logged[0]
    assert "SMS_STORE_UNAVAILABLE" in logged[0]
    assert served.alive()


@pytest.mark.parametrize("key", ["generated", "key-file"])
def test_a_start_that_finds_the_state_gone_says_the_counts_are_gone(
    moto: MotoCognito, sms_pool: str, tmp_path: Path, key: str
) -> None:
    """`rm state.sqlite*` between two starts: the second says, loudly, that every limit starts
    from zero; with a generated key (state.key stays) and with --hmac-key-file (the key's
    fingerprint stays beside the state, in state.fingerprint)."""
    flags = ["--state", str(tmp_path / "state.sqlite")]
    if key == "key-file":
        (tmp_path / "fleet.key").write_text("the fleet's key, long enough\n")
        flags += ["--hmac-key-file", str(tmp_path / "fleet.key")]
    with serving_against(moto, sms_pool, tmp_path, *flags) as first:
        assert first.sms_write() == OK
    assert "the SMS counts made before are gone" not in first.err()
    for path in state_files(tmp_path):
        path.unlink()
    with serving_against(moto, sms_pool, tmp_path, *flags) as second:
        err = second.err()
        assert "ERROR" in err
        assert "the SMS counts made before are gone" in err
        assert "starts again from zero" in err
        assert second.alive()  # loud, not refused
        assert second.sms_write() == OK


def test_a_state_emptied_and_rebuilt_while_serving_is_refused_not_counted_from_zero(
    served: Served, tmp_path: Path
) -> None:
    """`truncate -s0 state.sqlite`, then another process opens it (a replica starting) and
    builds a new, empty state in the same file: the serving attrgate used to count on from zero
    in it. Its contents are no longer the ones it opened: refused until a restart."""
    assert served.sms_write() == OK
    state = tmp_path / "state.sqlite"
    os.truncate(state, 0)
    rebuilt = subprocess.run(
        [
            sys.executable,
            "-c",
            "import asyncio, sys; from attrgate.store.sqlite import SqliteStore\n"
            "async def main():\n    s = SqliteStore(sys.argv[1])\n    await s.ping()\n"
            "    await s.close()\nasyncio.run(main())",
            str(state),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert served.sms_write() == STORE_DOWN
    assert served.sms_write() == STORE_DOWN
    assert served.plain_write() == OK
    assert any("lost its contents" in line for line in served.err().splitlines())


def test_a_state_switched_to_wal_while_serving_never_maps_shared_memory(
    served: Served, tmp_path: Path
) -> None:
    """An operator (or an older attrgate) switches the state to WAL while attrgate serves:
    SQLite would follow and map the -shm file, which another process can truncate under it
    (SIGBUS: the process dies, plain writes with it). attrgate refuses to count instead."""
    assert served.sms_write() == OK
    state = tmp_path / "state.sqlite"
    # Another process switches the file to WAL and keeps it open (the -shm file exists); this
    # test process never maps it (truncating a mapping of its own would kill pytest instead).
    switcher = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys, time\n"
            "db = sqlite3.connect(sys.argv[1])\n"
            "assert db.execute('PRAGMA journal_mode=WAL').fetchone()[0] == 'wal'\n"
            "db.execute('CREATE TABLE IF NOT EXISTS touched (x)')\n"
            "print('wal', flush=True)\n"
            "time.sleep(60)",
            str(state),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert switcher.stdout is not None
        assert switcher.stdout.readline().strip() == "wal"
        assert wait_until(lambda: served.health("attrgate.SmsStore") == NOT_SERVING, 10)
        assert served.sms_write() == STORE_DOWN
        os.truncate(tmp_path / "state.sqlite-shm", 0)
        time.sleep(3)  # the store's 2 s probe, had it mapped the -shm, dies now
        assert served.alive(), "attrgate died (SIGBUS?)"
        assert served.plain_write() == OK
        assert served.sms_write() == STORE_DOWN
    finally:
        switcher.kill()
        switcher.wait()
    assert any("switched to WAL mode" in line for line in served.err().splitlines())


def test_a_backup_copied_over_the_state_while_serving_is_refused(
    served: Served, tmp_path: Path
) -> None:
    """`cp backup.sqlite state.sqlite` while attrgate serves: same file, same contents' name,
    older counts. The file's change counter went back: refused, not counted on from the past."""
    state = tmp_path / "state.sqlite"
    assert served.sms_write() == OK
    backup = tmp_path / "backup.sqlite"
    backup.write_bytes(state.read_bytes())
    for _ in range(3):
        assert served.sms_write() == OK
    state.write_bytes(backup.read_bytes())  # in place: the same inode
    assert served.sms_write() == STORE_DOWN
    assert served.plain_write() == OK
    assert any("rolled back to an older copy" in line for line in served.err().splitlines())


def test_a_state_emptied_between_two_starts_says_the_counts_are_gone(
    moto: MotoCognito, sms_pool: str, tmp_path: Path
) -> None:
    flags = ["--state", str(tmp_path / "state.sqlite")]
    with serving_against(moto, sms_pool, tmp_path, *flags) as first:
        assert first.sms_write() == OK
    os.truncate(tmp_path / "state.sqlite", 0)
    with serving_against(moto, sms_pool, tmp_path, *flags) as second:
        assert "the SMS counts made before are gone" in second.err()
        assert second.sms_write() == OK


@contextlib.contextmanager
def counted_then_locked(
    moto: MotoCognito, pool: str, folder: Path
) -> Iterator[tuple[Path, sqlite3.Connection]]:
    """A state one SMS write was counted in (so it and its key exist), then locked by another
    connection, as an older replica holds it; the lock's holder is closed after."""
    state = folder / "state.sqlite"
    with serving_against(moto, pool, folder, "--state", str(state)) as first:
        assert first.sms_write() == OK
    holder = sqlite3.connect(state, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield state, holder
    finally:
        holder.close()


def test_a_state_another_process_holds_at_start_serves_plain_writes_until_it_opens(
    moto: MotoCognito, sms_pool: str, tmp_path: Path
) -> None:
    """An older replica (or anything) holds the state's lock as a new one starts: the new one
    serves, refuses SMS-triggering writes, and counts once the lock is gone (it used to refuse
    to start, taking plain writes down with it)."""
    with (
        counted_then_locked(moto, sms_pool, tmp_path) as (state, holder),
        serving_against(moto, sms_pool, tmp_path, "--state", str(state)) as second,
    ):
        assert second.plain_write() == OK
        assert second.sms_write() == STORE_DOWN
        assert second.health("attrgate.SmsStore") == NOT_SERVING
        holder.execute("COMMIT")
        assert wait_until(lambda: second.health("attrgate.SmsStore") == SERVING, 20)
        assert second.sms_write() == OK


def test_a_state_removed_while_a_start_waits_for_it_is_not_made_anew(
    moto: MotoCognito, sms_pool: str, tmp_path: Path
) -> None:
    """The state cannot be opened at start (locked), then goes away: a new empty file would
    count every limit from zero without a word. attrgate never creates it after its first try."""
    with (
        counted_then_locked(moto, sms_pool, tmp_path) as (state, holder),
        serving_against(moto, sms_pool, tmp_path, "--state", str(state)) as second,
    ):
        assert second.sms_write() == STORE_DOWN
        state.unlink()
        holder.execute("COMMIT")
        holder.close()
        time.sleep(3)  # the store's 2 s probe tries to open it again meanwhile
        assert second.sms_write() == STORE_DOWN
        assert not state.exists(), "the state was made anew, counting from zero"
        assert second.plain_write() == OK


def test_a_signal_while_a_start_waits_for_the_state_stops_it_cleanly(
    moto: MotoCognito, sms_pool: str, tmp_path: Path
) -> None:
    """SIGTERM while a start waits for a locked state: the start stops, exit status 0, without
    waiting out the lock (here 61 s) and without dying by the signal's default action (which
    skipped every cleanup, --local-cognito's temporary state included)."""
    with counted_then_locked(moto, sms_pool, tmp_path) as (state, _):
        starting = launch(moto, sms_pool, tmp_path, "--state", str(state), store_timeout="20")
        try:
            assert wait_until(lambda: holds_open(starting.process.pid, state), 60), starting.err()
            time.sleep(0.5)  # well into the wait for the lock
            assert starting.process.poll() is None, starting.err()
            began = time.monotonic()
        finally:
            status = stop_serve(starting.process, 30)
        assert status == 0, starting.err()
        assert time.monotonic() - began < 30
        assert "stopping before serving" in starting.err()
        assert "Traceback" not in starting.err()


def holds_open(pid: int, path: Path) -> bool:
    """Whether process `pid` has `path` open now."""
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                if os.readlink(fd) == str(path):
                    return True
    return False


def test_local_cognito_removes_its_temporary_state_on_exit(tmp_path: Path) -> None:
    policies = Path(__file__).resolve().parent.parent / "policies"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    port = free_port()
    process = start_serve(policies, port, "--local-cognito", output=tmp_path, TMPDIR=str(scratch))
    try:
        assert wait_until(lambda: "SMS guard counts in a temporary file" in out(tmp_path), 60)
        (line,) = [x for x in out(tmp_path).splitlines() if "temporary file" in x]
        state = Path(line.rpartition(": ")[2])
        assert state.parent.parent == scratch
        assert wait_until(lambda: "serving on port" in (tmp_path / "err").read_text(), 60)
        assert state.exists()
        assert (state.parent / "state.key").exists()
    finally:
        status = stop_serve(process, 30)
        assert status == 0, (tmp_path / "err").read_text()[-6000:]
    assert list(scratch.iterdir()) == [], "the temporary state (or its key) was left behind"


def out(folder: Path) -> str:
    return (folder / "out").read_text(errors="replace")


def test_a_store_that_never_answers_fails_sms_writes_after_the_store_timeout(
    moto: MotoCognito, sms_pool: str, tmp_path: Path
) -> None:
    """--store-timeout bounds an SMS-triggering write's wait for a silent Redis."""
    key = tmp_path / "hmac.key"
    key.write_text("k" * 32)
    with socket.socket() as silent:  # accepts connections (backlog), never replies
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        with serving_against(
            moto,
            sms_pool,
            tmp_path,
            "--redis-url",
            url,
            "--hmac-key-file",
            str(key),
            # the bound itself, not the breaker: the probe's failures must not open it first
            *("--store-breaker-failures", "1000"),
            store_timeout="1.5",
        ) as found:
            assert "does not answer now (timeout)" in found.err()
            # down from the start: reported before any SMS-triggering write asks
            assert wait_until(lambda: found.health("attrgate.SmsStore") == NOT_SERVING, 10)
            assert found.metric("attrgate_sms_store_failures_total", reason="timeout") >= 1
            started = time.monotonic()
            assert found.sms_write() == STORE_DOWN
            assert 1.5 <= time.monotonic() - started < 20
            assert found.plain_write() == OK


def test_a_hung_redis_fails_sms_writes_at_once_once_known_down_and_recovers_unaided(
    moto: MotoCognito, sms_pool: str, tmp_path: Path, own_redis: RedisServer
) -> None:
    """Redis SIGSTOPped (hung: connections accepted, nothing answered). The first SMS-triggering
    writes wait out --store-timeout; once the breaker opens, the next ones fail UNAVAILABLE
    SMS_STORE_UNAVAILABLE at once (counted as circuit_open, logged once, the store's health
    NOT_SERVING throughout); plain writes go on. SIGCONT: SMS-triggering writes succeed again
    within seconds, no restart (the probe's answer closes the breaker: the cooldown here is far
    longer than the test, so no half-open trial among the fast writes either)."""
    timeout = 0.5
    key = tmp_path / "hmac.key"
    key.write_text("k" * 32)
    redis = ("--redis-url", own_redis.url, "--hmac-key-file", str(key))
    breaker = ("--store-breaker-failures", "3", "--store-breaker-cooldown", "300")
    with serving_against(
        moto, sms_pool, tmp_path, *redis, *breaker, store_timeout=str(timeout)
    ) as served:
        assert served.sms_write() == OK
        failures = samples_of(metrics_text(served.metrics_port))[
            "attrgate_sms_store_failures_total"
        ]
        # the series exists from the start, at 0 (an alert on it needs it)
        assert [v for labels, v in failures if labels["reason"] == "circuit_open"] == [0]
        own_redis.pause()
        try:
            first = [timed(served.sms_write) for _ in range(3)]
            assert [answer for answer, _ in first] == [STORE_DOWN] * 3
            later = [timed(served.sms_write) for _ in range(20)]
            assert [answer for answer, _ in later] == [STORE_DOWN] * 20
            slow = [seconds for _, seconds in later if seconds >= timeout / 2]
            assert not slow, f"waited for a store known down: {slow}"
            assert served.plain_write() == OK
            assert served.health("attrgate.SmsStore") == NOT_SERVING
            assert served.metric("attrgate_sms_store_failures_total", reason="circuit_open") >= 20
            assert served.health("") == SERVING
        finally:
            own_redis.resume()
        resumed = time.monotonic()
        assert wait_until(lambda: served.sms_write() == OK, 15), "no recovery without a restart"
        recovered = time.monotonic() - resumed
        assert wait_until(lambda: served.health("attrgate.SmsStore") == SERVING, 10)
        assert served.plain_write() == OK
        logged = [line for line in served.err().splitlines() if "circuit_open" in line]
        assert len(logged) == 1, logged  # one line a minute, not one per refusal
        assert served.alive(), served.err()
    print(
        "\nfirst SMS writes (s):",
        " ".join(f"{s:.3f}" for _, s in first),
        "\nlater SMS writes (s): max",
        f"{max(s for _, s in later):.3f}, median {sorted(s for _, s in later)[10]:.3f}",
        f"\nrecovered {recovered:.2f}s after SIGCONT",
    )


def timed(write: Callable[[], tuple[str, str]]) -> tuple[tuple[str, str], float]:
    started = time.monotonic()
    answer = write()
    return answer, time.monotonic() - started
