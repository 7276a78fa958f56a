"""stable-diffusion-animation's frame arithmetic: prompts, key frames, frame counts, the
ping-pong order, slerp, and a spool that keeps frames on disk for the way back.

Frame counts (research/models-2.md §3), with F key frames and S = num_interpolation_steps:
- latent in-betweens (film_interpolation false): S frames per pair of key frames, the
  pair's first key frame included, the very last key frame never shown: (F - 1) * S;
- FILM: 2^d - 1 frames between each pair, d = max(ceil(log2 S), 1): (F - 1) * 2^d + 1;
- gif_ping_pong appends ``frames[-1:1:-1]``: n frames become 2n - 2 (one stays one).

Several prompts (``prompt_end`` split on ``|``): each consecutive pair of prompts makes
``num_animation_frames`` key frames at t = i / (N - 1); a pair's first key frame is the
previous pair's last (the same embedding from the same shared latent), so it is made
once: F = (P - 1) * (N - 1) + 1 for P prompts, F = N for two.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch


def prompts(prompt_start: str, prompt_end: str) -> list[str]:
    return [prompt_start] + [part.strip() for part in prompt_end.split("|")]


@dataclass(frozen=True)
class KeyFrame:
    """Key frame ``index``: the embedding at ``t`` between prompts ``pair`` and ``pair+1``."""

    index: int
    pair: int
    t: float


def key_frames(prompt_count: int, frames_per_pair: int) -> list[KeyFrame]:
    planned: list[KeyFrame] = []
    for pair in range(prompt_count - 1):
        for i in range(0 if pair == 0 else 1, frames_per_pair):
            planned.append(KeyFrame(len(planned), pair, i / (frames_per_pair - 1)))
    return planned


def film_depth(interpolation_steps: int) -> int:
    """FILM's recursion depth for S in-betweens: S rounded up to a power of two, at least
    one level."""
    return max(math.ceil(math.log2(interpolation_steps)), 1)


def video_frame_count(
    key_frame_count: int, interpolation_steps: int, film: bool, ping_pong: bool
) -> int:
    if film:
        count = (key_frame_count - 1) * 2 ** film_depth(interpolation_steps) + 1
    else:
        count = (key_frame_count - 1) * interpolation_steps
    return count + len(ping_pong_tail(count)) if ping_pong else count


def ping_pong_tail(count: int) -> list[int]:
    """Indices appended by gif_ping_pong: ``frames[-1:1:-1]`` of ``count`` frames."""
    return list(range(count))[-1:1:-1]


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, threshold: float = 0.9995) -> Any:
    """Spherical interpolation over the whole tensor (nearly parallel: linear)."""
    import torch

    a, b = v0.double().flatten(), v1.double().flatten()
    dot = torch.dot(a / a.norm(), b / b.norm())
    if abs(float(dot)) > threshold:
        mixed = (1 - t) * v0.double() + t * v1.double()
    else:
        theta = torch.acos(dot)
        sin_theta = torch.sin(theta)
        mixed = (torch.sin((1 - t) * theta) / sin_theta) * v0.double() + (
            torch.sin(t * theta) / sin_theta
        ) * v1.double()
    return mixed.to(v0.dtype)


def middle_embedding(embeddings: list[torch.Tensor]) -> Any:
    """The shared prefix's text embedding: the slerp half-way between two prompts; with
    more, the middle prompt (odd count) or the slerp of the two middle ones."""
    count = len(embeddings)
    if count % 2:
        return embeddings[count // 2]
    return slerp(0.5, embeddings[count // 2 - 1], embeddings[count // 2])


class FrameSpool:
    """Frames (H x W x 3 uint8) kept in a temporary file, not in memory, to be read back
    in reverse for gif_ping_pong."""

    def __init__(self) -> None:
        # Closed by close(): the spool lives across the generator that fills it.
        self._file = tempfile.TemporaryFile()  # noqa: SIM115
        self._shape: tuple[int, ...] | None = None
        self.count = 0

    def add(self, frame: np.ndarray) -> None:
        self._shape = frame.shape
        self._file.write(frame.tobytes())
        self.count += 1

    def read(self, indices: list[int]) -> Iterator[np.ndarray]:
        import numpy as np

        if self._shape is None:
            return
        size = int(np.prod(self._shape))
        for index in indices:
            self._file.seek(index * size)
            yield np.frombuffer(self._file.read(size), dtype=np.uint8).reshape(self._shape)

    def close(self) -> None:
        self._file.close()
