"""Seeds and step callbacks shared by the diffusion runners."""

from __future__ import annotations

import os
from typing import Any

from repligate.events import Canceled, Log, Progress
from repligate.runners.base import RunContext
from repligate.runners.threads import ThreadPolicy


def resolve_seed(seed: int | None, ctx: RunContext) -> int:
    """The originals draw two random bytes when no seed is given, and log the seed."""
    if seed is None:
        seed = int.from_bytes(os.urandom(2), "big")
    ctx.emit(Log(f"Using seed: {seed}"))
    return seed


def generator(seed: int) -> Any:
    """A CPU generator: the same seed gives the same image on any device."""
    import torch

    return torch.Generator("cpu").manual_seed(seed)


def step_callback(ctx: RunContext, threads: ThreadPolicy | None = None) -> Any:
    """``callback_on_step_end`` for diffusers: reports progress and stops between steps
    when the prediction is canceled (the exception skips the VAE decode).

    Made on the inference thread just before the pipeline call, it also sets torch's
    thread count there, now and again after every step, as ``threads`` chooses: a busy
    neighbour that comes or goes mid-run changes the count at the next step."""
    if threads is not None:
        threads.apply()

    def on_step_end(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> Any:
        ctx.emit(Progress(step=step + 1, total=int(pipe.num_timesteps)))
        if ctx.canceled():
            raise Canceled()
        if threads is not None:
            threads.apply()
        return kwargs

    return on_step_end
