"""Seeds, step callbacks and step counts shared by the diffusion runners."""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

from repligate.errors import InvalidField
from repligate.events import Canceled, Log, Progress
from repligate.runners.base import RunContext, RunnerEnv
from repligate.runners.threads import ThreadPolicy

if TYPE_CHECKING:
    from repligate.models.spec import ModelSpec

RANDOM_WEIGHTS_NOTE = "Note: this server runs tiny random weights; outputs are noise."


def start(env: RunnerEnv, spec: ModelSpec, seed: int | None, ctx: RunContext) -> int:
    """What every diffusion prediction begins with: a note in its logs when the weights
    are the tiny random ones, then its seed (drawn when absent), logged."""
    if env.weights.is_random(spec):
        ctx.emit(Log(RANDOM_WEIGHTS_NOTE))
    return resolve_seed(seed, ctx)


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


def steps_that_run(steps: int, strength: float) -> int:
    """Of ``steps``, how many an img2img-style pass runs at ``strength`` (diffusers'
    get_timesteps). None is a failure deep in the pipeline, so models refuse it at create."""
    return min(int(steps * strength), steps)


def too_few_steps(
    steps: int,
    strength: float,
    *,
    steps_field: str,
    strength_field: str | None,
    when: str,
) -> InvalidField | None:
    """The problem if a pass of ``steps`` at ``strength`` runs no step, naming the input to
    change and the values that work; ``strength_field`` is None for a fixed strength."""
    if steps_that_run(steps, strength) >= 1:
        return None
    if strength <= 0:
        if strength_field is None:
            raise ValueError("a fixed strength must be positive")
        return InvalidField(
            "number_gt",
            f"input.{strength_field}",
            f"{when}, a {strength_field} of {strength} runs no denoising step: use more than 0",
        )
    fewest = max(1, math.floor(1 / strength))
    while steps_that_run(fewest, strength) < 1:
        fewest += 1
    factor = strength_field or strength
    advice = f"use {steps_field} of at least {fewest}"
    if strength_field:
        advice += f", or a larger {strength_field}"
    return InvalidField(
        "number_gte",
        f"input.{steps_field}",
        f"{when}, only {steps_field} x {factor} of the steps run, and {steps} x {strength} "
        f"runs none: {advice}",
    )
