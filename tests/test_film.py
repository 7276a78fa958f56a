"""FILM in-betweens: the converter of the published weights, loading, the recursion's
frame count and order, padding to the network's alignment, and the frame plan of
stable-diffusion-animation (key frames, ping-pong, the spool it reads back)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from repligate.runners import animation_frames as plan
from repligate.runners import film
from repligate.runners.device import DeviceChoice
from repligate.runners.film_convert import convert
from repligate.runners.film_net import FilmConfig, FilmNet
from repligate.testing.tiny_animation import TINY_FILM

CPU = DeviceChoice("cpu", "float32")
TINY = FilmConfig(**TINY_FILM)


@pytest.fixture(scope="module")
def tiny_net() -> FilmNet:
    torch.manual_seed(0)
    return FilmNet(TINY).eval()


def _frames(seed: int, height: int = 64, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    shape = (1, 3, height, width)
    return torch.rand(shape, generator=generator), torch.rand(shape, generator=generator)


@pytest.mark.parametrize("kind", ["torchscript", "state_dict"])
def test_the_converted_weights_load_and_give_the_same_frames(
    tmp_path: Path, tiny_net: FilmNet, kind: str
) -> None:
    a, b = _frames(1)
    source = tmp_path / "film_net.pt"
    if kind == "torchscript":
        # As the published export: a TorchScript file (here traced) of the same modules.
        torch.jit.trace(tiny_net, (a, b)).save(str(source))
    else:
        torch.save(tiny_net.state_dict(), source)
    convert(source, tmp_path / "weights" / film.DIR_NAME, TINY)
    loaded = film.load(tmp_path / "weights", CPU)
    with torch.inference_mode():
        assert torch.equal(loaded(a, b), tiny_net(a, b))


def test_missing_or_broken_weights_say_what_to_install(tmp_path: Path) -> None:
    with pytest.raises(film.FilmUnavailable) as missing:
        film.load(tmp_path, CPU)
    message = str(missing.value)
    assert str(tmp_path / film.DIR_NAME) in message
    assert "film_convert" in message and "film_interpolation to false" in message
    folder = tmp_path / film.DIR_NAME
    folder.mkdir()
    (folder / film.WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(film.FilmUnavailable, match=r"loading .* failed"):
        film.load(tmp_path, CPU)


@pytest.mark.parametrize(("steps", "made"), [(1, 1), (3, 3)])
def test_the_recursion_makes_2_to_the_depth_minus_1_frames(
    tiny_net: FilmNet, steps: int, made: int
) -> None:
    a, b = _frames(2)
    checks: list[int] = []
    interpolator = film.Interpolator(tiny_net, plan.film_depth(steps), lambda: checks.append(1))
    frames = list(interpolator.between(a, b))
    assert len(frames) == made
    assert len(checks) == made  # one network pass per frame, cancel checked before each
    with torch.inference_mode():
        middle = tiny_net(a, b, 0.5).clamp(0, 1)
    assert torch.equal(frames[len(frames) // 2], middle)  # the first midpoint sits centred
    assert all(float(f.min()) >= 0 and float(f.max()) <= 1 for f in frames)


def test_sides_that_are_not_multiples_of_64_are_padded_and_cropped_back(
    tiny_net: FilmNet,
) -> None:
    a, b = _frames(3, height=40, width=72)
    (frame,) = film.Interpolator(tiny_net, 1, lambda: None).between(a, b)
    assert frame.shape == (1, 3, 40, 72)


def test_key_frames_share_the_boundary_between_prompt_pairs() -> None:
    assert plan.prompts("a", "b | c|d ") == ["a", "b", "c", "d"]
    keys = plan.key_frames(3, 3)
    assert [(k.pair, k.t) for k in keys] == [(0, 0.0), (0, 0.5), (0, 1.0), (1, 0.5), (1, 1.0)]
    assert [k.index for k in keys] == list(range(5))


def test_ping_pong_appends_the_way_back_from_the_last_frame_to_frame_2() -> None:
    assert plan.ping_pong_tail(5) == [4, 3, 2]
    assert plan.ping_pong_tail(2) == []
    assert plan.ping_pong_tail(1) == []
    # One frame (2 key frames, 1 latent step) has no way back; 4 frames get 2 more.
    assert plan.video_frame_count(2, 1, False, True) == 1
    assert plan.video_frame_count(3, 2, False, True) == 6
    spool = plan.FrameSpool()
    frames = [np.full((2, 3, 3), i, dtype=np.uint8) for i in range(5)]
    for frame in frames:
        spool.add(frame)
    back = list(spool.read(plan.ping_pong_tail(spool.count)))
    spool.close()
    assert [int(frame[0, 0, 0]) for frame in back] == [4, 3, 2]
    assert all(frame.shape == (2, 3, 3) for frame in back)


def test_slerp_keeps_the_ends_and_the_norm_between_orthogonal_vectors() -> None:
    v0, v1 = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    assert torch.allclose(plan.slerp(0.0, v0, v1), v0)
    assert torch.allclose(plan.slerp(1.0, v0, v1), v1)
    middle = plan.slerp(0.5, v0, v1)
    assert torch.allclose(middle.norm(), torch.tensor(1.0))  # a lerp would give 0.707
