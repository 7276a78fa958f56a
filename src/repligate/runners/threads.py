"""How many threads torch may use for CPU inference: as many cores as other processes
leave free, chosen again before each prediction and after every denoising step.

Why not simply all cores: torch's CPU wheels run each op on an OpenMP team (GNU libgomp)
that meets at a barrier after every op, and the threads that arrive first spin there. When
another process keeps one core busy, the team's thread on that core gets only part of its
time slices, and the whole team waits for it at every barrier. On 2 cores beside one busy
process the README's seed request went from 4.3 s to 99.6 s. A team no larger than the
free cores never waits for a slice: one thread there costs about what the lost core does.
``bench/contention.py`` compares this with the fixed settings (fewer threads, libgomp's
passive waiting, shorter spinning); the idle machine keeps every core.

The load is read in the background: eight times a second a daemon thread reads the CPU
time used on the cores this process may run on (``/proc/stat``) and by this process
(``getrusage``); their difference over the last second is what others used. Where
``/proc/stat`` does not exist the policy keeps torch's own default. A thread count applies
to the calling thread's team, so ``apply`` is called on the thread that runs inference.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import resource
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
# /proc/stat "cpuN" line fields: user nice system idle iowait irq softirq steal (guest
# time is already counted in user and nice). Idle, iowait and steal are not CPU that any
# process inside this machine used.
_NOT_BUSY = {3, 4, 7}
# A core counts as taken once others use this much of it: beside a team that spins at its
# barriers even a neighbour busy 15% of the time made a 768x768 run 1.7x slower on 2
# threads, 1.1x on one. An idle machine's daemons use a few percent.
TAKEN_AT = 0.2


def usable_cpus() -> set[int]:
    """The CPUs this process may run on (all of them where the OS cannot say)."""
    if hasattr(os, "sched_getaffinity"):
        return os.sched_getaffinity(0)
    return set(range(os.cpu_count() or 1))


def machine_busy_seconds(cpus: set[int] | None = None, path: Path = PROC_STAT) -> float | None:
    """CPU seconds all processes have used on ``cpus`` (default: those this process may
    run on) since boot, or None where unknown."""
    if cpus is None:
        cpus = usable_cpus()
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    ticks, seen = 0, 0
    for line in lines:
        fields = line.split()
        if not fields or not fields[0].startswith("cpu") or fields[0] == "cpu":
            continue
        if fields[0][3:].isdigit() and int(fields[0][3:]) in cpus:
            ticks += sum(int(v) for i, v in enumerate(fields[1:9]) if i not in _NOT_BUSY)
            seen += 1
    if not seen:
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def own_busy_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuLoad:
    """Cores that other processes kept busy over the last ``window`` seconds."""

    def __init__(
        self,
        interval: float = 0.125,
        window: float = 1.0,
        machine: Callable[[], float | None] = machine_busy_seconds,
        own: Callable[[], float] = own_busy_seconds,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._interval = interval
        self._machine, self._own, self._clock = machine, own, clock
        self._readings: deque[tuple[float, float, float]] = deque(
            maxlen=max(2, round(window / interval) + 1)
        )
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        machine = self._machine()
        if machine is None:
            return
        with self._lock:
            self._readings.append((self._clock(), machine, self._own()))

    def others(self) -> float | None:
        """Busy cores outside this process, or None until two readings exist."""
        with self._lock:
            if len(self._readings) < 2:
                return None
            (t0, m0, o0), (t1, m1, o1) = self._readings[0], self._readings[-1]
        if t1 <= t0:
            return None
        return max(0.0, ((m1 - m0) - (o1 - o0)) / (t1 - t0))

    def start(self) -> CpuLoad:
        if self._thread is None:
            self.sample()
            self._thread = threading.Thread(
                target=_sample_until_stopped,
                args=(weakref.ref(self), self._stop, self._interval),
                name="cpu-load",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None


def _sample_until_stopped(
    load: weakref.ref[CpuLoad], stop: threading.Event, interval: float
) -> None:
    # Holds the CpuLoad weakly: the thread ends by itself once its server's runner
    # environment is gone (tests make many), even if nobody called stop().
    while not stop.wait(interval):
        current = load()
        if current is None:
            return
        current.sample()
        del current


class ThreadPolicy:
    """The torch thread count for the inference threads of this process.

    ``fixed`` (REPLIGATE_TORCH_THREADS) wins when set. Otherwise each of ``workers``
    inference threads gets an equal share of the cores that other processes leave free,
    at least one and at most ``most`` (torch's own default: the physical cores). A core
    counts as taken when others use ``TAKEN_AT`` of it or more.
    """

    def __init__(
        self,
        *,
        fixed: int | None = None,
        most: int | None = None,
        cores: int | None = None,
        load: CpuLoad | None = None,
        workers: int = 1,
    ) -> None:
        self.fixed = fixed
        self.most = most
        self.cores = cores or len(usable_cpus())
        self.load = load
        self.workers = max(1, workers)

    @classmethod
    def for_device(cls, device: str, fixed: int | None, workers: int = 1) -> ThreadPolicy:
        """A fixed count where one is set; on CPU, else, the count follows the load. On a
        GPU torch's CPU threads only feed the device, and torch's default stays. Without
        torch (an install for ONNX models only) there is no torch count to follow, and
        ``share`` still gives each worker its part of the cores."""
        if fixed:
            return cls(fixed=fixed)
        if device != "cpu" or importlib.util.find_spec("torch") is None:
            return cls(workers=workers)
        import torch

        return cls(most=torch.get_num_threads(), load=CpuLoad().start(), workers=workers)

    def choose(self) -> int | None:
        """The count to use now; None leaves torch as it is."""
        if self.fixed:
            return self.fixed
        most = self.most
        others = self.load.others() if self.load is not None else None
        if most is None or others is None:
            return most
        free = self.cores - math.floor(others + 1.0 - TAKEN_AT)
        return max(1, min(most, free // self.workers))

    def share(self) -> int:
        """Threads for an inference library whose count is set once, not per prediction
        (an onnxruntime session): the fixed count, else this worker's equal part of the
        cores, whatever the load now (a count chosen on a busy moment would stay too
        small), at most ``most``."""
        if self.fixed:
            return self.fixed
        share = max(1, self.cores // self.workers)
        return min(share, self.most) if self.most else share

    def apply(self) -> int | None:
        """Set the chosen count for the calling thread (the one that runs inference)."""
        count = self.choose()
        if count is None:
            return None
        import torch

        if torch.get_num_threads() != count:
            log.debug("torch threads: %d -> %d", torch.get_num_threads(), count)
            torch.set_num_threads(count)
        return count

    def close(self) -> None:
        if self.load is not None:
            self.load.stop()
