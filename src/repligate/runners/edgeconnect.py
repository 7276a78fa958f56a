"""EdgeConnect's two generators (knazeri/edge-connect, ``src/networks.py``) in plain
PyTorch, laid out so the authors' ``EdgeModel_gen.pth`` and ``InpaintingModel_gen.pth``
load unchanged.

The edge generator's convolutions use spectral normalisation. ``torch.nn.utils.spectral_norm``
stores ``weight_orig``, ``weight_u`` and ``weight_v`` and in eval mode divides the weight by
``u . (W v)``; ``SpectralNormConv`` holds the same three tensors under the same names and does
that division itself (inference only: no power iteration). Checkpoints saved before PyTorch
1.0 stored the normalised ``weight`` instead of ``weight_v``; those load too.

Widths and depth are read from the weights (``from_state_dict``), so tiny test weights with
the same keys and narrower channels run through the same code as the real ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

EDGE_WEIGHTS_FILE = "EdgeModel_gen.pth"
INPAINT_WEIGHTS_FILE = "InpaintingModel_gen.pth"
RESIDUAL_BLOCKS = 8


class SpectralNormConv(nn.Module):
    """A Conv2d (or ConvTranspose2d) whose weight is ``weight_orig / sigma``, with the keys
    of ``torch.nn.utils.spectral_norm``."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        bias: bool = True,
        transposed: bool = False,
    ) -> None:
        super().__init__()
        shape = (in_channels, out_channels) if transposed else (out_channels, in_channels)
        self.weight_orig = nn.Parameter(torch.empty(*shape, kernel, kernel))
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        # spectral_norm's dim: 1 for transposed convolutions (their output channels).
        self.dim = 1 if transposed else 0
        rows = shape[self.dim]
        self.weight_u: torch.Tensor
        self.weight_v: torch.Tensor
        self.register_buffer("weight_u", F.normalize(torch.randn(rows), dim=0))
        self.register_buffer("weight_v", F.normalize(torch.randn(self.matrix().shape[1]), dim=0))
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.transposed = transposed

    def matrix(self, weight: torch.Tensor | None = None) -> torch.Tensor:
        weight = self.weight_orig if weight is None else weight
        if self.dim != 0:
            weight = weight.transpose(0, self.dim)
        return weight.reshape(weight.shape[0], -1)

    def weight(self) -> torch.Tensor:
        sigma = torch.dot(self.weight_u, torch.mv(self.matrix(), self.weight_v))
        return self.weight_orig / sigma

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return F.conv_transpose2d(
                x, self.weight(), self.bias, self.stride, self.padding, 0, 1, self.dilation
            )
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation)

    def _load_from_state_dict(self, state: dict[str, Any], prefix: str, *args: Any) -> None:
        u = state.get(prefix + "weight_u")
        rows, columns = self.weight_orig.shape[:2]
        if self.transposed and u is not None and u.shape[0] == rows != columns:
            # Before PyTorch 1.0, spectral_norm normalised transposed convolutions along
            # dim 0 too: u has the input channels' length.
            self.dim = 0
            self.weight_u = torch.empty_like(u)
            self.weight_v = torch.empty(self.matrix().shape[1])
        # Saved before PyTorch 1.0: ``weight`` (normalised) instead of ``weight_v``. Any v
        # with u . (W v) = sigma gives the same weight; sigma is weight_orig / weight.
        old = prefix + "weight"
        if old in state and prefix + "weight_v" not in state:
            normalised = state.pop(old)
            original, u = state[prefix + "weight_orig"], state[prefix + "weight_u"]
            sigma = (original / normalised).mean()
            matrix = self.matrix(original)
            v = F.normalize(torch.mv(matrix.t(), u), dim=0)
            state[prefix + "weight_v"] = v * (sigma / torch.dot(u, torch.mv(matrix, v)))
        super()._load_from_state_dict(state, prefix, *args)


def _conv(
    in_channels: int,
    out_channels: int,
    kernel: int,
    spectral: bool,
    *,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    bias: bool = True,
    transposed: bool = False,
) -> nn.Module:
    if spectral:
        return SpectralNormConv(
            in_channels,
            out_channels,
            kernel,
            stride=stride,
            padding=padding,
            dilation=dilation,
            bias=bias,
            transposed=transposed,
        )
    if transposed:
        return nn.ConvTranspose2d(
            in_channels, out_channels, kernel, stride=stride, padding=padding, bias=bias
        )
    return nn.Conv2d(
        in_channels,
        out_channels,
        kernel,
        stride=stride,
        padding=padding,
        dilation=dilation,
        bias=bias,
    )


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, track_running_stats=False)


class ResnetBlock(nn.Module):
    def __init__(self, dim: int, dilation: int, spectral: bool) -> None:
        super().__init__()
        # As the original: no bias under spectral normalisation.
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(dilation),
            _conv(dim, dim, 3, spectral, dilation=dilation, bias=not spectral),
            _norm(dim),
            nn.ReLU(True),
            nn.ReflectionPad2d(1),
            _conv(dim, dim, 3, spectral, bias=not spectral),
            _norm(dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class _Generator(nn.Module):
    """Encoder (7x7, two stride-2 convolutions), dilated residual blocks, decoder."""

    spectral = False
    in_channels = 0
    out_channels = 0

    def __init__(self, width: int = 64, blocks: int = RESIDUAL_BLOCKS) -> None:
        super().__init__()
        spectral = self.spectral
        self.encoder = nn.Sequential(
            nn.ReflectionPad2d(3),
            _conv(self.in_channels, width, 7, spectral),
            _norm(width),
            nn.ReLU(True),
            _conv(width, width * 2, 4, spectral, stride=2, padding=1),
            _norm(width * 2),
            nn.ReLU(True),
            _conv(width * 2, width * 4, 4, spectral, stride=2, padding=1),
            _norm(width * 4),
            nn.ReLU(True),
        )
        self.middle = nn.Sequential(*(ResnetBlock(width * 4, 2, spectral) for _ in range(blocks)))
        self.decoder = nn.Sequential(
            _conv(width * 4, width * 2, 4, spectral, stride=2, padding=1, transposed=True),
            _norm(width * 2),
            nn.ReLU(True),
            _conv(width * 2, width, 4, spectral, stride=2, padding=1, transposed=True),
            _norm(width),
            nn.ReLU(True),
            nn.ReflectionPad2d(3),
            # The last convolution is never spectrally normalised, in both generators.
            nn.Conv2d(width, self.out_channels, 7),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.middle(self.encoder(x)))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Any:
        """The generator these weights are for, loaded strictly. Accepts the checkpoint
        as EdgeConnect saves it (``{"iteration": ..., "generator": state_dict}``)."""
        if isinstance(state.get("generator"), dict):
            state = state["generator"]
        first = "encoder.1.weight_orig" if cls.spectral else "encoder.1.weight"
        if first not in state:
            raise ValueError(f"not {cls.__name__} weights: no {first}")
        blocks = len({key.split(".")[1] for key in state if key.startswith("middle.")})
        network = cls(width=state[first].shape[0], blocks=blocks)
        network.load_state_dict(dict(state))
        return network.eval()


class EdgeGenerator(_Generator):
    """In: masked grayscale, masked edges, mask. Out: an edge map in [0, 1]."""

    spectral = True
    in_channels = 3
    out_channels = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.features(x))


class InpaintGenerator(_Generator):
    """In: masked RGB image, edges. Out: an RGB image in [0, 1]."""

    in_channels = 4
    out_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(self.features(x)) + 1) / 2
