"""The disk cache that weights downloaded by URL share (SDXL's replicate_weights, Flux's
hf_lora): filled once per key, least recently used out past the cap, never an entry in use."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from repligate.runners.weights_cache import WeightsCache


def writer(calls: list[str], name: str, size: int = 100) -> Callable[[Path], None]:
    def fill(directory: Path) -> None:
        calls.append(name)
        (directory / "weights.bin").write_bytes(b"x" * size)

    return fill


def entries(root: Path) -> set[str]:
    return {p.read_text() for p in root.glob("*/name")}


def test_an_entry_is_filled_once_and_read_back(tmp_path: Path) -> None:
    cache = WeightsCache(tmp_path, max_bytes=10_000, max_download_bytes=10_000)
    calls: list[str] = []
    for _ in range(3):
        with cache.entry("https://example.com/a.tar", writer(calls, "a")) as directory:
            assert (directory / "weights.bin").read_bytes() == b"x" * 100
    assert calls == ["a"] and cache.fills == 1


def test_entries_in_use_are_never_evicted_and_the_newest_stays(tmp_path: Path) -> None:
    cache = WeightsCache(tmp_path, max_bytes=1, max_download_bytes=10_000)
    calls: list[str] = []
    with cache.entry("a", writer(calls, "a")) as first:
        (first / "name").write_text("a")
        with cache.entry("b", writer(calls, "b")) as second:
            (second / "name").write_text("b")
            # Over the cap, but both are being read.
            assert entries(tmp_path) == {"a", "b"}
            assert (first / "weights.bin").is_file()
        # b is the most recently used: it stays; a is still in use.
        assert entries(tmp_path) == {"a", "b"}
    assert entries(tmp_path) == {"b"}


def test_a_failed_fill_leaves_nothing_and_the_next_try_fills_again(tmp_path: Path) -> None:
    cache = WeightsCache(tmp_path, max_bytes=10_000, max_download_bytes=10_000)

    def broken(directory: Path) -> None:
        (directory / "half").write_bytes(b"x")
        raise ValueError("download failed")

    with pytest.raises(ValueError, match="download failed"), cache.entry("a", broken):
        pass
    assert list(tmp_path.iterdir()) == []
    calls: list[str] = []
    with cache.entry("a", writer(calls, "a")):
        pass
    assert calls == ["a"]


def test_concurrent_askers_of_one_key_wait_for_one_fill(tmp_path: Path) -> None:
    cache = WeightsCache(tmp_path, max_bytes=10_000, max_download_bytes=10_000)
    started, release = threading.Event(), threading.Event()
    calls: list[str] = []

    def slow(directory: Path) -> None:
        calls.append("fill")
        started.set()
        assert release.wait(timeout=30)
        (directory / "weights.bin").write_bytes(b"y")

    seen: list[bytes] = []

    def ask() -> None:
        with cache.entry("same", slow) as directory:
            seen.append((directory / "weights.bin").read_bytes())

    threads = [threading.Thread(target=ask) for _ in range(3)]
    threads[0].start()
    assert started.wait(timeout=30)
    for thread in threads[1:]:
        thread.start()
    release.set()
    for thread in threads:
        thread.join(timeout=30)
    # Whenever the later askers arrived (during the fill or after it), none filled again.
    assert calls == ["fill"] and seen == [b"y"] * 3
