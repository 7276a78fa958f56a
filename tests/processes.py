"""Real ``repligate`` processes for the scale-out tests, started with the README's own
commands.

The "Scaling out" guide in README.md marks each block it gives with an HTML comment,
``<!-- scaleout: NAME -->``, right before a fenced ``sh`` block. Two kinds of block:

- environment blocks (``env``, ``queue``): ``NAME=value`` lines, the settings every
  process of the deployment reads;
- command blocks (``migrate``, ``keys``, ``api``, ``worker``): one ``repligate ...``
  command line, optionally preceded by ``NAME=value`` assignments.

The tests run exactly those lines. The only thing they change is the placeholders,
``$NAME`` (or ``${NAME}``), which the guide asks the operator to fill in: addresses,
ports, credentials, paths (``PLACEHOLDERS`` below lists them). ``repligate`` becomes
``python -m repligate.cli`` with this checkout's ``src`` on ``PYTHONPATH``. The machine's
own environment (minus any ``REPLIGATE_*``, so the developer's settings never leak in) is
inherited, as a host's would be: that is where AWS credentials come from.

Processes start in a session of their own (so a ``serve --workers N`` supervisor and its
children are stopped together), log to files in the deployment's folder, and are always
stopped by ``Deployment.stop`` (SIGTERM, then SIGKILL of the whole group); the fixtures
that build a deployment call it in their finalizer, and ``atexit`` catches the rest.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SOURCE = ROOT / "src"

# The placeholders the guide may use, and what the tests give for each. The guide's
# table of them (README, "Scaling out") says the same to an operator.
PLACEHOLDERS = {
    "DATABASE_URL": "a PostgreSQL database of its own (postgresql+psycopg://...)",
    "REDIS_URL": "the Redis on 127.0.0.1:6379",
    "EVENT_CHANNEL": "a pub/sub channel of its own per deployment",
    "BROKER_URL": "the Celery broker (with the Celery queue only)",
    "QUEUE_PREFIX": "Celery queue names of their own per deployment (Celery queue only)",
    "S3_BUCKET": "moto's bucket",
    "S3_ENDPOINT_URL": "moto's S3 server on a loopback port",
    "SECRET_KEY": "a random secret per deployment",
    "PUBLIC_URL": "each API process's own URL (no load balancer in front)",
    "WEIGHTS_DIR": "tiny random weights",
    "DATA_DIR": "a fresh folder per process (no host shares local files)",
    "HOST": "127.0.0.1",
    "PORT": "a free loopback port",
    "API_PROCESSES": "the --workers count a test asks for",
    "MODELS": "the models a worker runs",
    "KEY_NAME": "a name per key",
}
_MARKER = re.compile(r"<!--\s*scaleout:\s*([a-z0-9-]+)\s*-->")
_BLOCK = re.compile(r"\s*```sh\n(.*?)^```", re.S | re.M)
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")
_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")

# Every guide block a test used in this session (see test_every_guide_block_is_run).
STARTED: set[str] = set()


class GuideError(AssertionError):
    """The README's guide is not in the form this harness runs."""


def guide_blocks(readme: Path = README) -> dict[str, list[str]]:
    """Each marked block's logical lines (continuations joined; blanks and comments
    dropped), by marker name."""
    text = readme.read_text()
    blocks: dict[str, list[str]] = {}
    for marker in _MARKER.finditer(text):
        name = marker.group(1)
        block = _BLOCK.match(text, marker.end())
        if block is None:
            raise GuideError(f"<!-- scaleout: {name} --> is not followed by a ```sh block")
        if name in blocks:
            raise GuideError(f"<!-- scaleout: {name} --> appears twice")
        joined = block.group(1).replace("\\\n", " ")
        lines = [line.strip() for line in joined.splitlines()]
        blocks[name] = [line for line in lines if line and not line.startswith("#")]
    return blocks


def substitute(token: str, values: Mapping[str, str], where: str) -> str:
    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in values:
            raise GuideError(f"{where}: no value for the placeholder ${name}")
        return values[name]

    return _PLACEHOLDER.sub(value, token)


def _assignment(token: str, values: Mapping[str, str], where: str) -> tuple[str, str]:
    name, _, raw = token.partition("=")
    return name, substitute(raw, values, f"{where} ({name})")


def guide_env(name: str, values: Mapping[str, str]) -> dict[str, str]:
    """An environment block's settings, placeholders filled in."""
    env: dict[str, str] = {}
    for line in _block(name):
        tokens = shlex.split(line)
        if tokens and tokens[0] == "export":
            tokens = tokens[1:]
        if len(tokens) != 1 or not _ASSIGNMENT.match(tokens[0]):
            raise GuideError(f"scaleout: {name}: not a NAME=value line: {line!r}")
        key, value = _assignment(tokens[0], values, f"scaleout: {name}")
        env[key] = value
    return env


def guide_command(name: str, values: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """A command block's own assignments and its argv (``repligate`` -> this checkout)."""
    lines = _block(name)
    if len(lines) != 1:
        raise GuideError(f"scaleout: {name}: expected one command line, found {lines}")
    tokens = shlex.split(lines[0])
    env: dict[str, str] = {}
    while tokens and _ASSIGNMENT.match(tokens[0]):
        key, value = _assignment(tokens.pop(0), values, f"scaleout: {name}")
        env[key] = value
    if not tokens or tokens[0] != "repligate":
        raise GuideError(f"scaleout: {name}: the command is not `repligate ...`: {lines[0]!r}")
    args = [substitute(token, values, f"scaleout: {name}") for token in tokens[1:]]
    return env, [sys.executable, "-m", "repligate.cli", *args]


def _block(name: str) -> list[str]:
    blocks = guide_blocks()
    if name not in blocks:
        raise GuideError(f"README.md has no <!-- scaleout: {name} --> block")
    STARTED.add(name)
    return blocks[name]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def machine_env() -> dict[str, str]:
    """The host's own environment for a process: the developer's REPLIGATE_* settings
    never leak in; this checkout's code is the one that runs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REPLIGATE_")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SOURCE), env.get("PYTHONPATH")]))
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


# -- processes ---------------------------------------------------------------------------

START_DEADLINE_SECONDS = 180.0  # a cold start on a busy 2-core machine, with margin
STOP_DEADLINE_SECONDS = 60.0
_LIVE: set[Process] = set()


class Process:
    """One started command (``repligate serve`` and its children, say), logging to files."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], logs: Path) -> None:
        self.name, self.argv, self.env = name, argv, env
        logs.mkdir(parents=True, exist_ok=True)
        self._stdout_path = logs / f"{name}.stdout"
        self._stderr_path = logs / f"{name}.stderr"
        with self._stdout_path.open("ab") as out, self._stderr_path.open("ab") as err:
            # A session of its own: the whole group can be signalled, children included.
            self.popen = subprocess.Popen(
                argv, env=env, cwd=ROOT, stdout=out, stderr=err, start_new_session=True
            )
        self.killed = False  # True once stop() had to SIGKILL it
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    def fail(self, why: str) -> None:
        pytest.fail(
            f"{self.name} ({shlex.join(self.argv[3:])}): {why}\n--- its stderr ---\n"
            f"{self.stderr()[-6000:]}"
        )

    def wait_until(self, ready: Callable[[], bool], what: str) -> None:
        """Until ``ready()``; fails showing stderr if the process exits or the (generous)
        deadline passes first."""
        done = threading.Event()
        deadline = threading.Timer(START_DEADLINE_SECONDS, done.set)
        deadline.start()
        try:
            while not ready():
                if self.popen.poll() is not None:
                    self.fail(f"exited with {self.popen.returncode} before {what}")
                if done.wait(0.2):
                    self.fail(f"not {what} within {START_DEADLINE_SECONDS:g} s")
        finally:
            deadline.cancel()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the group and wait; SIGKILL whatever is left after the deadline (and any
        child left behind). Returns the exit code of the process itself (negative: the
        signal that ended it; uvicorn re-raises SIGTERM once it has shut down cleanly)."""
        try:
            if self.popen.poll() is None:
                os.killpg(self.pid, sig)
            try:
                self.popen.wait(timeout=STOP_DEADLINE_SECONDS)
            except subprocess.TimeoutExpired:
                self.killed = True
        finally:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
            self.popen.wait()
            _LIVE.discard(self)
        return self.popen.returncode

    def stop_gracefully(self) -> None:
        """SIGTERM; fails, showing stderr, unless it shut down by itself and cleanly."""
        code = self.stop()
        if self.killed or code not in (0, -signal.SIGTERM):
            self.fail(f"did not shut down cleanly on SIGTERM (exit {code})")


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_LIVE):
        process.stop(signal.SIGKILL)


def get_json(url: str, timeout: float = 10.0) -> tuple[int, dict[str, object]] | None:
    """(status, body) of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (OSError, ValueError):
        return None


class ApiProcess(Process):
    """``repligate serve``: ready when ``GET /ready`` answers 200, from each of its
    ``processes`` API processes (told apart by the ``pid`` in the answer)."""

    url: str
    processes: int

    def wait_ready(self) -> None:
        pids: set[object] = set()

        def ready() -> bool:
            answer = get_json(f"{self.url}/ready")
            if answer is not None and answer[0] == 200:
                pids.add(answer[1].get("pid"))
            return len(pids) >= self.processes

        self.wait_until(ready, f"ready at {self.url}/ready ({self.processes} processes)")


# -- a deployment ------------------------------------------------------------------------


@dataclass(frozen=True)
class ExtraProcess:
    """A process a queue setup needs beside the API processes (a Celery worker)."""

    marker: str
    values: Mapping[str, str] = field(default_factory=dict)
    # Ready once this text appears in its stderr (None: once it is started).
    ready_text: str | None = None


@dataclass(frozen=True)
class QueueSetup:
    """How predictions get from the API processes to a model: the guide's environment
    blocks it adds to ``env``, and the processes it needs beside the API ones."""

    name: str
    env_blocks: tuple[str, ...] = ()
    processes: tuple[ExtraProcess, ...] = ()


# The Celery queue: API processes queue predictions on the broker; a `repligate worker`
# (the guide's command) runs them. Celery logs "ready." once the worker consumes.
CELERY = QueueSetup(
    "celery",
    env_blocks=("queue",),
    processes=(
        ExtraProcess("worker", {"MODELS": "stability-ai/stable-diffusion"}, ready_text="ready."),
    ),
)


class Deployment:
    """One scaled-out deployment as the guide describes it, on this machine: ``values``
    fills the guide's placeholders (the per-process ones, DATA_DIR, HOST, PORT,
    API_PROCESSES and KEY_NAME, are filled here)."""

    def __init__(self, values: Mapping[str, str], queue: QueueSetup, workdir: Path) -> None:
        self.values = dict(values)
        self.queue = queue
        self.workdir = workdir
        self._count = 0
        self._lock = threading.Lock()
        self.processes: list[Process] = []

    def _values(self, **more: str) -> dict[str, str]:
        with self._lock:
            self._count += 1
            data_dir = self.workdir / f"data-{self._count}"
        data_dir.mkdir(parents=True)
        return {**self.values, "DATA_DIR": str(data_dir), **more}

    def environment(self, values: Mapping[str, str], own: Mapping[str, str]) -> dict[str, str]:
        env = machine_env()
        for block in ("env", *self.queue.env_blocks):
            env.update(guide_env(block, values))
        env.update(own)
        return env

    def run(self, marker: str, **more: str) -> str:
        """A one-shot command (``migrate``, ``keys``); its stdout. Fails showing stderr."""
        # A one-off command serves nothing: any public URL will do.
        values = self._values(**{"PUBLIC_URL": "http://127.0.0.1", **more})
        own, argv = guide_command(marker, values)
        done = subprocess.run(
            argv,
            env=self.environment(values, own),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=START_DEADLINE_SECONDS,
        )
        if done.returncode != 0:
            pytest.fail(f"`{marker}` exited with {done.returncode}:\n{done.stderr[-6000:]}")
        return done.stdout

    def create_key(self, name: str) -> str:
        """A new API key's token: the last line ``repligate keys create`` prints."""
        return self.run("keys", KEY_NAME=name).strip().splitlines()[-1]

    def create_keys(self, *names: str) -> dict[str, str]:
        """Several keys at once (each command is a process start: they overlap)."""
        with ThreadPoolExecutor(len(names)) as pool:
            return dict(zip(names, pool.map(self.create_key, names), strict=True))

    def start(self) -> None:
        """Once per deployment: the migration, then the queue's own processes."""
        self.run("migrate")
        for extra in self.queue.processes:
            self.start_extra(extra)

    def start_extra(self, extra: ExtraProcess) -> Process:
        values = self._values(**{"PUBLIC_URL": "http://127.0.0.1", **extra.values})
        own, argv = guide_command(extra.marker, values)
        process = Process(
            f"{extra.marker}-{self._count}", argv, self.environment(values, own), self.workdir
        )
        self.processes.append(process)
        text = extra.ready_text
        if text is not None:
            process.wait_until(lambda: text in process.stderr(), f"saying {text!r}")
        return process

    def start_api(self, *, port: int | None = None, processes: int = 1) -> ApiProcess:
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        # No load balancer here: unless the test gave one, each process's own URL.
        values = self._values(
            HOST="127.0.0.1",
            PORT=str(port),
            API_PROCESSES=str(processes),
            PUBLIC_URL=self.values.get("PUBLIC_URL", url),
        )
        own, argv = guide_command("api", values)
        api = ApiProcess(f"api-{self._count}", argv, self.environment(values, own), self.workdir)
        api.url, api.processes = url, processes
        self.processes.append(api)
        api.wait_ready()
        return api

    def restart(self, api: ApiProcess) -> ApiProcess:
        """The same command again, on the same port (after ``api.stop()``)."""
        fresh = ApiProcess(f"{api.name}-again", api.argv, api.env, self.workdir)
        fresh.url, fresh.processes = api.url, api.processes
        self.processes.append(fresh)
        fresh.wait_ready()
        return fresh

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
