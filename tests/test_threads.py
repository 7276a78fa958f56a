"""Torch's thread count for CPU inference (runners/threads.py): what the load reading
sees, what the policy chooses from it, and that the server's worker thread gets it."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repligate.runners.threads import CpuLoad, ThreadPolicy, machine_busy_seconds
from repligate.settings import Settings
from tests.api_helpers import app_client
from tests.conftest import FAST_SD_INPUT, SD_REF, make_token


def test_machine_busy_time_counts_our_cores_and_leaves_out_idle_iowait_and_steal(
    tmp_path: Path,
) -> None:
    import os

    stat = tmp_path / "stat"
    stat.write_text(
        #      user nice system idle iowait irq softirq steal guest guest_nice
        "cpu  300 5 50 1000 20 3 2 7 40 0\n"
        "cpu0 100 5 50 500 10 3 2 7 20 0\n"
        "cpu1 200 0 0 500 10 0 0 0 20 0\n"
        "intr 12345 6 7\n"
    )
    tick = os.sysconf("SC_CLK_TCK")
    assert machine_busy_seconds({0}, stat) == pytest.approx(160 / tick)
    assert machine_busy_seconds({0, 1}, stat) == pytest.approx(360 / tick)
    assert machine_busy_seconds({0, 1, 7}, stat) == pytest.approx(360 / tick)


def test_machine_busy_time_is_unknown_without_proc_stat(tmp_path: Path) -> None:
    assert machine_busy_seconds({0}, tmp_path / "missing") is None
    (tmp_path / "odd").write_text("cpu  1 2 3 4 5 6 7 8\nintr 1 2 3\n")
    assert machine_busy_seconds({0}, tmp_path / "odd") is None


class Counters:
    """Fake machine and process CPU time, advanced by the test."""

    def __init__(self) -> None:
        self.now = 0.0
        self.machine = 0.0
        self.own = 0.0

    def advance(self, seconds: float, machine_cores: float, own_cores: float) -> None:
        self.now += seconds
        self.machine += seconds * machine_cores
        self.own += seconds * own_cores

    def load(self) -> CpuLoad:
        return CpuLoad(
            interval=0.25,
            window=1.0,
            machine=lambda: self.machine,
            own=lambda: self.own,
            clock=lambda: self.now,
        )


def test_load_is_what_others_used_over_the_last_second() -> None:
    counters = Counters()
    load = counters.load()
    load.sample()
    assert load.others() is None  # one reading says nothing yet
    for _ in range(8):  # two seconds: this process on 2 cores, nobody else
        counters.advance(0.25, machine_cores=2.0, own_cores=2.0)
        load.sample()
    assert load.others() == pytest.approx(0.0)
    for _ in range(4):  # the last second: a neighbour takes a core, we keep one
        counters.advance(0.25, machine_cores=2.0, own_cores=1.0)
        load.sample()
    assert load.others() == pytest.approx(1.0)
    counters.advance(0.25, machine_cores=1.0, own_cores=1.0)  # it stopped
    load.sample()
    assert load.others() == pytest.approx(0.75)  # 3 of the window's 4 quarters busy


def test_load_without_proc_stat_never_has_an_answer() -> None:
    load = CpuLoad(machine=lambda: None)
    load.sample()
    load.sample()
    assert load.others() is None


def _adaptive(others: float | None, cores: int = 2, most: int = 2, workers: int = 1) -> int | None:
    counters = Counters()
    load = counters.load()
    if others is not None:
        load.sample()
        counters.advance(1.0, machine_cores=others + 1.0, own_cores=1.0)
        load.sample()
    return ThreadPolicy(most=most, cores=cores, load=load, workers=workers).choose()


def test_every_core_is_used_while_others_leave_them_free() -> None:
    assert _adaptive(0.0) == 2
    assert _adaptive(0.1) == 2  # daemons, short tasks
    assert _adaptive(0.0, cores=16, most=8) == 8  # at most torch's default (physical cores)
    assert _adaptive(1.0, cores=16, most=8) == 8  # a busy hyperthread sibling is no loss
    assert _adaptive(None) == 2  # no reading yet: torch's default


def test_a_busy_neighbour_core_is_left_to_it() -> None:
    assert _adaptive(0.25) == 1  # even a part-time neighbour stalls a spinning team
    assert _adaptive(0.6) == 1  # against our 2 spinning threads it gets about 2/3 core
    assert _adaptive(1.0) == 1
    assert _adaptive(1.0, cores=4, most=4) == 3
    assert _adaptive(3.0) == 1  # never fewer than one


def test_workers_share_the_free_cores() -> None:
    assert _adaptive(0.0, cores=8, most=8, workers=2) == 4
    assert _adaptive(1.0, cores=8, most=8, workers=2) == 3
    assert _adaptive(1.1, cores=8, most=8, workers=2) == 3
    assert _adaptive(1.3, cores=8, most=8, workers=2) == 3  # 6 free cores
    assert _adaptive(0.0, cores=2, most=2, workers=4) == 1


def test_a_fixed_count_wins_and_no_policy_changes_nothing() -> None:
    counters = Counters()
    assert ThreadPolicy(fixed=3, most=2, cores=2, load=counters.load()).choose() == 3
    assert ThreadPolicy().choose() is None
    assert ThreadPolicy.for_device("cpu", 5).choose() == 5
    assert ThreadPolicy.for_device("cuda", None).choose() is None


def test_the_sampling_thread_ends_once_nobody_holds_the_load() -> None:
    before = set(threading.enumerate())
    load = CpuLoad(interval=0.01).start()
    (thread,) = [t for t in set(threading.enumerate()) - before if t.name == "cpu-load"]
    deadline = time.monotonic() + 30
    while load.others() is None:  # real /proc/stat readings arrive
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert load.others() is not None and load.others() >= 0.0  # type: ignore[operator]
    del load
    gc.collect()
    thread.join(timeout=30)
    assert not thread.is_alive()


@pytest.fixture
def torch_threads_restored() -> Iterator[int]:
    """Setting a count also changes torch's process-wide default; put it back after."""
    import torch

    original = torch.get_num_threads()
    yield original
    torch.set_num_threads(original)


def test_apply_sets_the_count_on_the_calling_thread(torch_threads_restored: int) -> None:
    import torch

    wanted = torch_threads_restored + 1
    seen: list[int] = []

    def inference_thread() -> None:
        ThreadPolicy(fixed=wanted).apply()
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=inference_thread)
    worker.start()
    worker.join()
    assert seen == [wanted]


def test_repligate_torch_threads_reaches_the_server_worker(
    settings: Settings,
    torch_threads_restored: int,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wanted = torch_threads_restored + 1
    monkeypatch.setenv("REPLIGATE_TORCH_THREADS", str(wanted))
    from_env = Settings()
    assert from_env.torch_threads == wanted
    caplog.set_level(logging.DEBUG, logger="repligate.runners.threads")
    with app_client(settings, torch_threads=from_env.torch_threads) as client:
        client_auth = {"Authorization": f"Bearer {make_token(client)}"}
        response = client.post(
            "/v1/predictions",
            json={"version": SD_REF, "input": FAST_SD_INPUT},
            headers={**client_auth, "Prefer": "wait"},
        )
        assert response.status_code == 201, response.text
    changes = [
        r
        for r in caplog.records
        if r.name == "repligate.runners.threads" and "->" in r.getMessage()
    ]
    assert changes, "the worker never set torch's thread count"
    assert all((r.threadName or "").startswith("repligate-worker") for r in changes)
    assert changes[0].getMessage().endswith(f"-> {wanted}")
