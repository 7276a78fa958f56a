"""FILM in-betweens: loading the network and the original's recursive in-betweening.

Weights live in ``$REPLIGATE_WEIGHTS_DIR/film-net/``: ``model.safetensors`` (the state dict
of ``film_net.FilmNet``) and ``config.json`` (``FilmConfig``'s fields; absent = the
published Style model). ``runners/film_convert.py`` writes that directory from the
published PyTorch export; the README says where to get it. Nothing else is ever put in
FILM's place: without the weights a prediction that asks for FILM fails, saying what to
install and that ``film_interpolation: false`` works without them.

In-betweening as in the original (frame-interpolation's
``interpolate_recursively_from_memory``): between each pair of frames the midpoint
(t = 0.5) is made, then recursively the midpoints of each half, ``depth`` times: 2^depth - 1
new frames per pair, in time order, clipped to [0, 1] on the way out only.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repligate.errors import PredictionFailure

if TYPE_CHECKING:
    import torch

    from repligate.runners.device import DeviceChoice
    from repligate.runners.film_net import FilmNet

DIR_NAME = "film-net"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CACHE_KEY = "film-net"


class FilmUnavailable(PredictionFailure):
    """FILM's weights are not installed (or do not load)."""


def weights_dir(root: Path | None) -> Path | None:
    return None if root is None else root / DIR_NAME


def missing_message(root: Path | None, why: str) -> str:
    where = (
        f"{root / DIR_NAME}/ (REPLIGATE_WEIGHTS_DIR={root})"
        if root is not None
        else f"$REPLIGATE_WEIGHTS_DIR/{DIR_NAME}/ (set REPLIGATE_WEIGHTS_DIR)"
    )
    target = f"{root or '$REPLIGATE_WEIGHTS_DIR'}/{DIR_NAME}"
    return (
        f"film_interpolation needs the FILM frame interpolation network, and {why}. "
        f"Install its weights in {where}: download film_net_fp32.pt from "
        "https://github.com/dajes/frame-interpolation-pytorch/releases and run "
        f"`python -m repligate.runners.film_convert film_net_fp32.pt {target}` "
        "(see the README, 'FILM weights'). "
        "Or set film_interpolation to false: its in-betweens need no extra weights."
    )


def load(root: Path | None, device: DeviceChoice) -> FilmNet:
    """The FILM network from ``root/film-net/``, in eval mode on ``device``; a clear
    FilmUnavailable when it is not there or does not load."""
    from safetensors.torch import load_file

    from repligate.runners.film_net import FilmConfig, FilmNet

    folder = weights_dir(root)
    if folder is None or not (folder / WEIGHTS_FILE).is_file():
        raise FilmUnavailable(missing_message(root, "its weights are not installed"))
    try:
        config = FilmConfig()
        if (folder / CONFIG_FILE).is_file():
            fields = json.loads((folder / CONFIG_FILE).read_text())
            for name in ("flow_convs", "flow_filters"):
                if name in fields:
                    fields[name] = tuple(fields[name])
            config = FilmConfig(**fields)
        net = FilmNet(config)
        net.load_state_dict(load_file(folder / WEIGHTS_FILE), strict=True)
    except Exception as exc:  # safetensors, torch and json each raise their own
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise FilmUnavailable(
            missing_message(root, f"loading {folder} failed ({type(exc).__name__}: {first})")
        ) from None
    return net.eval().to(device.name, dtype=device.dtype)


class Interpolator:
    """Makes the in-betweens of consecutive frames with a loaded FilmNet.

    ``between(a, b)`` yields the 2^depth - 1 frames strictly between ``a`` and ``b``
    (1 x 3 x H x W tensors in [0, 1]) one at a time, so at most depth + 2 frames are alive;
    ``check`` runs before every network pass (cancel)."""

    def __init__(self, net: FilmNet, levels: int, check: Callable[[], None]) -> None:
        self.net = net
        self.levels = levels
        self.check = check

    def between(self, a: torch.Tensor, b: torch.Tensor) -> Iterator[torch.Tensor]:
        import torch

        with torch.inference_mode():
            padded_a, crop = _pad(a, self.net.config.alignment)
            padded_b, _ = _pad(b, self.net.config.alignment)
            for frame in self._recurse(padded_a, padded_b, self.levels):
                yield _crop(frame, crop).clamp(0, 1)

    def _recurse(self, a: torch.Tensor, b: torch.Tensor, levels: int) -> Iterator[torch.Tensor]:
        if levels == 0:
            return
        self.check()
        middle = self.net(a, b, 0.5)
        yield from self._recurse(a, middle, levels - 1)
        yield middle
        yield from self._recurse(middle, b, levels - 1)


def _pad(image: torch.Tensor, align: int) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """Zero-padded, centred, to multiples of ``align`` (as the original pads); the crop
    that undoes it."""
    from torch.nn import functional as F

    height, width = image.shape[2], image.shape[3]
    pad_h, pad_w = -height % align, -width % align
    top, left = pad_h // 2, pad_w // 2
    if pad_h or pad_w:
        image = F.pad(image, (left, pad_w - left, top, pad_h - top))
    return image, (top, left, height, width)


def _crop(image: Any, crop: tuple[int, int, int, int]) -> Any:
    top, left, height, width = crop
    return image[:, :, top : top + height, left : left + width]
