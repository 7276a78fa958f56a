"""FILM (Frame Interpolation for Large Motion, Reda et al., ECCV 2022) in plain PyTorch.

The "film_net" Style model of google-research/frame-interpolation, which
andreasjansson/stable-diffusion-animation uses for its in-betweens. Three stages:

1. a cascaded feature pyramid of each image (one sub-tree extractor shared by every level:
   level i concatenates the j-th output of the sub-trees started at levels i-j);
2. residual optical flow, coarse to fine, both ways (the coarse levels share one
   estimator; the finest ``len(flow_convs) - 1`` levels have their own);
3. both pyramids (image + features) warped to the wanted time, and a U-Net-like decoder
   fuses them into the in-between frame.

Module and parameter names follow the published PyTorch export of the TF weights
(github.com/dajes/frame-interpolation-pytorch), so its state dict loads as it is
(``runners/film.py`` loads it, ``runners/film_convert.py`` converts the file).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

COLOR_CHANNELS = 3
FLOW_CHANNELS = 2


@dataclass(frozen=True)
class FilmConfig:
    """The Style model's options; the tiny test network shrinks ``filters`` and friends."""

    pyramid_levels: int = 7
    fusion_pyramid_levels: int = 5
    specialized_levels: int = 3
    sub_levels: int = 4
    filters: int = 64
    flow_convs: tuple[int, ...] = (3, 3, 3, 3)
    flow_filters: tuple[int, ...] = (32, 64, 128, 256)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @property
    def alignment(self) -> int:
        """Image sides must be multiples of this (the coarsest level halves them this often)."""
        return int(2 ** (self.pyramid_levels - 1))


class Conv(nn.Sequential):
    """A convolution with TF's "same" padding (even kernels pad right and bottom only),
    then LeakyReLU(0.2) unless ``activate`` is false."""

    def __init__(self, in_channels: int, out_channels: int, size: int, activate: bool = True):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, size, padding="same" if size % 2 else 0)
        )
        self.even = size % 2 == 0
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.even:
            x = F.pad(x, (0, 1, 0, 1))
        y: torch.Tensor = self[0](x)
        return F.leaky_relu(y, 0.2) if self.activate else y


class SubTreeExtractor(nn.Module):
    """A plain feature pyramid: two 3x3 convolutions per level, ``filters << i`` wide,
    average-pooled between levels."""

    def __init__(self, filters: int, levels: int) -> None:
        super().__init__()
        convs = []
        channels = COLOR_CHANNELS
        for i in range(levels):
            width = filters << i
            convs.append(nn.Sequential(Conv(channels, width, 3), Conv(width, width, 3)))
            channels = width
        self.convs = nn.ModuleList(convs)

    def forward(self, image: torch.Tensor, levels: int) -> list[torch.Tensor]:
        head, pyramid = image, []
        for i, layer in enumerate(self.convs):
            if i == levels:
                break
            head = layer(head)
            pyramid.append(head)
            if i < levels - 1:
                head = F.avg_pool2d(head, 2, 2)
        return pyramid


class FeatureExtractor(nn.Module):
    def __init__(self, filters: int, sub_levels: int) -> None:
        super().__init__()
        self.extract_sublevels = SubTreeExtractor(filters, sub_levels)
        self.sub_levels = sub_levels

    def forward(self, images: list[torch.Tensor]) -> list[torch.Tensor]:
        count = len(images)
        trees = [
            self.extract_sublevels(image, min(count - i, self.sub_levels))
            for i, image in enumerate(images)
        ]
        return [
            torch.cat([trees[i - j][j] for j in range(min(i + 1, self.sub_levels))], dim=1)
            for i in range(count)
        ]


class FlowEstimator(nn.Module):
    """3x3 convolutions over both images' features, then two 1x1 down to a flow."""

    def __init__(self, in_channels: int, convs: int, filters: int) -> None:
        super().__init__()
        layers = []
        for _ in range(convs):
            layers.append(Conv(in_channels, filters, 3))
            in_channels = filters
        layers.append(Conv(in_channels, filters // 2, 1))
        layers.append(Conv(filters // 2, FLOW_CHANNELS, 1, activate=False))
        self._convs = nn.ModuleList(layers)

    def forward(self, features_a: torch.Tensor, features_b: torch.Tensor) -> torch.Tensor:
        net = torch.cat([features_a, features_b], dim=1)
        for conv in self._convs:
            net = conv(net)
        return net


class PyramidFlowEstimator(nn.Module):
    def __init__(self, config: FilmConfig) -> None:
        super().__init__()
        in_channels = config.filters << 1
        estimators = []
        for i, (convs, filters) in enumerate(
            zip(config.flow_convs, config.flow_filters, strict=True)
        ):
            estimators.append(FlowEstimator(in_channels, convs, filters))
            in_channels += config.filters << (i + 2)
        # The coarse levels share the last estimator; the finest levels have their own,
        # kept coarse-first.
        self._predictor = estimators[-1]
        self._predictors = nn.ModuleList(estimators[:-1][::-1])

    def forward(
        self, pyramid_a: list[torch.Tensor], pyramid_b: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        levels = len(pyramid_a)
        special = len(self._predictors)
        flow = self._predictor(pyramid_a[-1], pyramid_b[-1])
        residuals = [flow]
        for i in range(levels - 2, -1, -1):
            estimator = self._predictor if i >= special else self._predictors[special - 1 - i]
            flow = F.interpolate(2 * flow, size=pyramid_a[i].shape[2:4], mode="bilinear")
            residual = estimator(pyramid_a[i], warp(pyramid_b[i], flow))
            residuals.insert(0, residual)
            flow = residual + flow
        return residuals


def fusion_channels(level: int, filters: int) -> int:
    """Channels of the aligned pyramid at ``level``: both images' colours, features and
    flows."""
    return (sum(filters << i for i in range(level)) + COLOR_CHANNELS + FLOW_CHANNELS) * 2


class Fusion(nn.Module):
    """The decoder: from the coarsest aligned level up, nearest upsampling + a 2x2
    convolution, concatenation with the level's aligned pyramid, two 3x3 convolutions."""

    def __init__(self, config: FilmConfig) -> None:
        super().__init__()
        filters, levels = config.filters, config.sub_levels
        self.output_conv = nn.Conv2d(filters, COLOR_CHANNELS, kernel_size=1)
        self.convs = nn.ModuleList()
        in_channels = fusion_channels(levels, filters)
        skip = 0
        for i in reversed(range(levels)):
            width = filters << min(i, config.specialized_levels)
            self.convs.append(
                nn.ModuleList(
                    [
                        Conv(in_channels, width, 2, activate=False),
                        Conv(in_channels + (skip or width), width, 3),
                        Conv(width, width, 3),
                    ]
                )
            )
            in_channels = width
            skip = fusion_channels(i, filters) - width // 2

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        net = pyramid[-1]
        for k, layers in enumerate(self.convs):
            assert isinstance(layers, nn.ModuleList)
            level = pyramid[len(self.convs) - 1 - k]
            net = F.interpolate(net, size=level.shape[2:4], mode="nearest")
            net = layers[0](net)
            net = layers[2](layers[1](torch.cat([level, net], dim=1)))
        out: torch.Tensor = self.output_conv(net)
        return out


class FilmNet(nn.Module):
    def __init__(self, config: FilmConfig) -> None:
        super().__init__()
        self.config = config
        self.extract = FeatureExtractor(config.filters, config.sub_levels)
        self.predict_flow = PyramidFlowEstimator(config)
        self.fuse = Fusion(config)

    def forward(self, x0: torch.Tensor, x1: torch.Tensor, time: float = 0.5) -> torch.Tensor:
        """The frame at ``time`` between ``x0`` and ``x1`` (N x 3 x H x W in [0, 1], sides
        multiples of ``config.alignment``). film_net was trained at 0.5 only."""
        levels, fused = self.config.pyramid_levels, self.config.fusion_pyramid_levels
        images = [image_pyramid(x0, levels), image_pyramid(x1, levels)]
        features = [self.extract(images[0]), self.extract(images[1])]
        forward_flow = flow_pyramid(self.predict_flow(features[0], features[1]))[:fused]
        backward_flow = flow_pyramid(self.predict_flow(features[1], features[0]))[:fused]
        # Backward warping: the backward flow reads from image 0, the forward from image 1.
        backward_flow = [flow * time for flow in backward_flow]
        forward_flow = [flow * (1 - time) for flow in forward_flow]
        warped_0 = [
            warp(torch.cat([image, feature], dim=1), flow)
            for image, feature, flow in zip(images[0], features[0], backward_flow, strict=False)
        ]
        warped_1 = [
            warp(torch.cat([image, feature], dim=1), flow)
            for image, feature, flow in zip(images[1], features[1], forward_flow, strict=False)
        ]
        aligned = [
            torch.cat(parts, dim=1)
            for parts in zip(warped_0, warped_1, backward_flow, forward_flow, strict=True)
        ]
        return self.fuse(aligned)


def image_pyramid(image: torch.Tensor, levels: int) -> list[torch.Tensor]:
    pyramid = [image]
    for _ in range(levels - 1):
        pyramid.append(F.avg_pool2d(pyramid[-1], 2, 2))
    return pyramid


def flow_pyramid(residuals: list[torch.Tensor]) -> list[torch.Tensor]:
    """Residual flows (finest first) summed up into flows, coarse to fine."""
    flow = residuals[-1]
    flows = [flow]
    for residual in reversed(residuals[:-1]):
        flow = residual + F.interpolate(2 * flow, size=residual.shape[2:4], mode="bilinear")
        flows.insert(0, flow)
    return flows


def warp(image: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Backward warp: output(y, x) = bilinear read of ``image`` at (y + flow_y, x + flow_x),
    borders repeated. ``flow`` holds (dx, dy) in pixels."""
    height, width = flow.shape[2], flow.shape[3]
    dtype, device = flow.dtype, flow.device
    # Pixel centres in grid_sample's [-1, 1] coordinates (align_corners=False).
    xs = torch.linspace(-1 + 1 / width, 1 - 1 / width, width, dtype=dtype, device=device)
    ys = torch.linspace(-1 + 1 / height, 1 - 1 / height, height, dtype=dtype, device=device)
    grid = torch.stack(
        [
            xs[None, None, :] + flow[:, 0] * (2 / width),
            ys[None, :, None] + flow[:, 1] * (2 / height),
        ],
        dim=3,
    )
    return F.grid_sample(image, grid, mode="bilinear", padding_mode="border", align_corners=False)
