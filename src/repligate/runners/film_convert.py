"""Convert the published FILM weights into the layout ``runners/film.py`` loads.

    python -m repligate.runners.film_convert film_net_fp32.pt $REPLIGATE_WEIGHTS_DIR/film-net

The input is the PyTorch export of google-research/frame-interpolation's "film_net" Style
model: the TorchScript file of github.com/dajes/frame-interpolation-pytorch's releases
(film_net_fp32.pt or film_net_fp16.pt), or a state dict its export.py saved with
``--statedict``. The output is ``model.safetensors`` (float32) + ``config.json``; the
server never unpickles or runs a TorchScript file itself. The weights are checked by
loading them strictly into ``film_net.FilmNet`` before anything is written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repligate.runners.film_net import FilmConfig


def read_state_dict(source: Path) -> dict[str, Any]:
    import torch

    try:
        scripted = torch.jit.load(str(source), map_location="cpu")
        state: dict[str, Any] = dict(scripted.state_dict())
    except RuntimeError:
        # Not TorchScript: a plain state dict (tensors only, nothing executed).
        state = torch.load(source, map_location="cpu", weights_only=True)
    return {name: tensor.float().contiguous() for name, tensor in state.items()}


def convert(source: Path, target: Path, config: FilmConfig | None = None) -> None:
    """``source`` as ``target/model.safetensors`` + ``config.json``; ``config`` is the
    published Style model's unless told (tests convert a tiny one)."""
    from safetensors.torch import save_file

    from repligate.runners.film import CONFIG_FILE, WEIGHTS_FILE
    from repligate.runners.film_net import FilmConfig, FilmNet

    state = read_state_dict(source)
    config = config or FilmConfig()
    FilmNet(config).load_state_dict(state, strict=True)
    target.mkdir(parents=True, exist_ok=True)
    save_file(state, target / WEIGHTS_FILE)
    (target / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    convert(Path(argv[0]), Path(argv[1]))
    print(f"wrote {Path(argv[1]) / 'model.safetensors'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
