"""What a policy folder may hold that is no policy file: a real `attrgate serve` refuses each at
start in one line naming the file, and on SIGHUP rejects the reload and keeps serving.

Each server runs under an address-space limit: a regression (reading /dev/zero used to grow
without end) then fails the test instead of taking the machine down.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from attrgate.v1 import attrgate_pb2_grpc as pb_grpc
from support.moto_cognito import free_port
from support.policies import svc_policy
from support.prometheus import metrics_text, samples_of, total
from support.rpc import as_caller, attrs_request
from support.served import start_serve
from support.waiting import wait_until

MEMORY_LIMIT = 2 << 30
POOL = "us-east-1_Pool1"


def _zero(folder: Path) -> list[Path]:
    os.symlink("/dev/zero", folder / "zero.yaml")
    return [folder / "zero.yaml"]


def _fifo(folder: Path) -> list[Path]:
    os.mkfifo(folder / "fifo.yaml")
    return [folder / "fifo.yaml"]


def _loop(folder: Path) -> list[Path]:
    for name in ("l1", "l2"):
        os.symlink(".", folder / name)
    return [folder / "l1", folder / "l2"]


def _outside(folder: Path) -> list[Path]:
    os.symlink("/etc/passwd", folder / "passwd.yaml")
    return [folder / "passwd.yaml"]


def _outside_yaml(folder: Path) -> list[Path]:
    elsewhere = folder.parent / "elsewhere.yaml"
    elsewhere.write_text(svc_policy().replace("name: p", "name: elsewhere"))
    os.symlink(elsewhere, folder / "elsewhere.yaml")
    return [folder / "elsewhere.yaml"]


def _large(folder: Path) -> list[Path]:
    line = b"# " + b"x" * 97 + b"\n"
    (folder / "large.yaml").write_bytes(line * 500_000)  # 50 MB that would parse (comments)
    return [folder / "large.yaml"]


def _socket(folder: Path) -> list[Path]:
    # AF_UNIX paths are limited to ~108 bytes: bind in a short folder, then move it in.
    with tempfile.TemporaryDirectory(dir="/tmp") as short:
        with socket.socket(socket.AF_UNIX) as listener:
            listener.bind(os.path.join(short, "s"))
        os.replace(os.path.join(short, "s"), folder / "socket.yaml")
    return [folder / "socket.yaml"]


# kind: (what to create, the file the one line must name, what it must say)
SPECIAL: dict[str, tuple[Callable[[Path], list[Path]], str, str]] = {
    "zero": (_zero, "zero.yaml", "outside the policy folder"),
    "fifo": (_fifo, "fifo.yaml", "a FIFO, not a regular file"),
    "loop": (_loop, "l1", "symlink loop"),
    "outside": (_outside, "passwd.yaml", "outside the policy folder (to /etc/passwd)"),
    "outside-yaml": (_outside_yaml, "elsewhere.yaml", "outside the policy folder"),
    "large": (_large, "large.yaml", "50000000 bytes, over the --policy-max-bytes limit"),
    "socket": (_socket, "socket.yaml", "a socket, not a regular file"),
}


def _folder(root: Path, name: str) -> Path:
    folder = root / name / "policies"
    folder.mkdir(parents=True)
    (folder / "a.yaml").write_text(svc_policy())
    return folder


def test_the_server_refuses_to_start_on_a_special_file_naming_it(tmp_path: Path) -> None:
    started: dict[str, tuple[subprocess.Popen[bytes], Path, Path]] = {}
    try:
        for kind, (create, _, _) in SPECIAL.items():
            folder = _folder(tmp_path, kind)
            create(folder)
            output = folder.parent
            process = start_serve(folder, free_port(), output=output, memory_limit=MEMORY_LIMIT)
            started[kind] = (process, folder, output)
        for kind, (process, folder, output) in started.items():
            _, name, says = SPECIAL[kind]
            try:
                code = process.wait(30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{kind}: still running: the load blocked or spun") from None
            lines = (output / "err").read_text().splitlines()
            assert code == 2, (kind, lines)
            assert len(lines) == 1, (kind, lines)
            assert lines[0].startswith(
                f"attrgate: refusing to start: invalid policy set: {folder / name}: "
            ), (kind, lines)
            assert says in lines[0], (kind, lines)
    finally:
        for process, _, _ in started.values():
            if process.poll() is None:
                process.kill()
                process.wait(10)


def _allowed(stub: pb_grpc.UserAttributesStub) -> bool:
    decision = stub.CheckUpdateUserAttributes(
        attrs_request(POOL, [("given_name", "Ada")]), metadata=as_caller("svc"), timeout=10
    )
    return bool(decision.allowed)


def test_a_reload_with_a_special_file_is_rejected_and_the_old_set_keeps_serving(
    tmp_path: Path,
) -> None:
    folder = _folder(tmp_path, "served")
    err = folder.parent / "err"
    port, metrics_port = free_port(), free_port()
    process = start_serve(
        folder,
        port,
        "--metrics-listen",
        f"127.0.0.1:{metrics_port}",
        output=folder.parent,
        memory_limit=MEMORY_LIMIT,
    )

    def reloads(result: str) -> float:
        samples = samples_of(metrics_text(metrics_port))
        return total(samples.get("attrgate_policy_reloads_total", []), result=result)

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = pb_grpc.UserAttributesStub(channel)
            assert _allowed(stub)
            for count, (kind, (create, name, says)) in enumerate(SPECIAL.items(), start=1):
                created = create(folder)
                sent = time.monotonic()
                process.send_signal(signal.SIGHUP)
                assert wait_until(lambda n=count: reloads("rejected") == n, seconds=20), kind
                took = time.monotonic() - sent
                (line,) = [
                    x for x in err.read_text().splitlines() if "policy reload rejected" in x
                ][count - 1 : count]
                assert f"{folder / name}: " in line, (kind, line)
                assert says in line, (kind, line)
                assert took < 15, f"{kind}: the rejection took {took:.1f}s"
                assert _allowed(stub), f"{kind}: the old set stopped serving"
                for path in created:
                    path.unlink()
            assert reloads("loaded") == 0
            assert "Traceback" not in err.read_text()
        # A FIFO was in the folder: nothing may still be blocked on it.
        stopped = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
        assert time.monotonic() - stopped < 15
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
