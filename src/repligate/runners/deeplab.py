"""DeepLabV3 with a ResNet-101 backbone in plain PyTorch, laid out as torchvision's
``deeplabv3_resnet101`` so that its published weights load unchanged.

torchvision cannot be installed beside the torch this project pins, so the network is
rebuilt here: the same module tree (hence the same state-dict keys), the same dilations
(output stride 8: layer3 and layer4 dilate instead of striding) and the same forward pass.
Only inference is needed: batch norms stay in eval mode, dropout is never applied, and the
auxiliary FCN head is kept for its keys but not run (torchvision runs it and the original
throws its output away).

Widths are read from the weights (``DeepLabV3.from_state_dict``), so tiny test weights with
the same keys and narrower channels load through the same code as the real ones.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

# torchvision's file name, as downloaded from download.pytorch.org/models/.
WEIGHTS_FILE = "deeplabv3_resnet101_coco-586e9e4e.pth"
# ResNet-101: bottleneck blocks per stage.
LAYERS = (3, 4, 23, 3)
EXPANSION = 4
ASPP_RATES = (12, 24, 36)
NUM_CLASSES = 21  # Pascal VOC, background included
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Bottleneck(nn.Module):
    def __init__(
        self, inplanes: int, planes: int, stride: int, dilation: int, downsample: bool
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(
            planes, planes, 3, stride=stride, padding=dilation, dilation=dilation, bias=False
        )
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * EXPANSION, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * EXPANSION)
        self.downsample = (
            nn.Sequential(
                nn.Conv2d(inplanes, planes * EXPANSION, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * EXPANSION),
            )
            if downsample
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNetBackbone(nn.Module):
    """torchvision's ResNet-101 without avgpool and fc (its IntermediateLayerGetter),
    with ``replace_stride_with_dilation=[False, True, True]``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self._inplanes = width
        self._dilation = 1
        self.layer1 = self._stage(width, LAYERS[0], stride=1, dilate=False)
        self.layer2 = self._stage(width * 2, LAYERS[1], stride=2, dilate=False)
        self.layer3 = self._stage(width * 4, LAYERS[2], stride=2, dilate=True)
        self.layer4 = self._stage(width * 8, LAYERS[3], stride=2, dilate=True)

    def _stage(self, planes: int, blocks: int, stride: int, dilate: bool) -> nn.Sequential:
        # As torchvision: a dilated stage keeps the resolution; its first block still uses
        # the previous dilation, the others the new one.
        previous = self._dilation
        if dilate:
            self._dilation *= stride
            stride = 1
        downsample = stride != 1 or self._inplanes != planes * EXPANSION
        layers = [Bottleneck(self._inplanes, planes, stride, previous, downsample)]
        self._inplanes = planes * EXPANSION
        layers += [
            Bottleneck(self._inplanes, planes, 1, self._dilation, False) for _ in range(1, blocks)
        ]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPPPooling(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = super().forward(x)
        return F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> Any:
    padding = dilation if kernel == 3 else 0
    return nn.Sequential(
        nn.Conv2d(
            in_channels, out_channels, kernel, padding=padding, dilation=dilation, bias=False
        ),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class ASPP(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [
                _conv_bn_relu(in_channels, out_channels, 1),
                *(_conv_bn_relu(in_channels, out_channels, 3, rate) for rate in ASPP_RATES),
                ASPPPooling(in_channels, out_channels),
            ]
        )
        self.project = nn.Sequential(
            nn.Conv2d(len(self.convs) * out_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(),
            nn.Dropout(0.5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


def deeplab_head(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        ASPP(in_channels, channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, NUM_CLASSES, 1),
    )


def fcn_head(in_channels: int, channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Conv2d(channels, NUM_CLASSES, 1),
    )


class DeepLabV3(nn.Module):
    """``width``: the stem's channels (64 in ResNet-101); ``head``: the ASPP's (256)."""

    def __init__(self, width: int = 64, head: int = 256, aux: bool = True) -> None:
        super().__init__()
        self.backbone = ResNetBackbone(width)
        features = width * 8 * EXPANSION
        self.classifier = deeplab_head(features, head)
        # Published with the weights (trained with an auxiliary loss); not run here.
        self.aux_classifier = fcn_head(features // 2, head) if aux else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-pixel class scores at the input's size: (N, 21, H, W)."""
        logits = self.classifier(self.backbone(x))
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> DeepLabV3:
        """The network these weights are for, loaded (strictly: any other key or shape is
        an error, as weights of another architecture should be)."""
        try:
            width = state["backbone.conv1.weight"].shape[0]
            head = state["classifier.0.convs.0.0.weight"].shape[0]
        except KeyError as missing:
            raise ValueError(f"not DeepLabV3-ResNet101 weights: no {missing}") from None
        aux = any(key.startswith("aux_classifier.") for key in state)
        network = cls(width=width, head=head, aux=aux)
        network.load_state_dict(state)
        return network.eval()


def preprocess(image: Any, short_side: int = 400) -> torch.Tensor:
    """The original's transform: ``T.Resize(400)`` (short side, bilinear, as torchvision
    0.6 computed the long side), ``ToTensor`` and ImageNet normalisation; (1, 3, H, W)."""
    import numpy as np
    from PIL import Image

    width, height = image.size
    if min(width, height) != short_side:
        if width < height:
            size = (short_side, int(short_side * height / width))
        else:
            size = (int(short_side * width / height), short_side)
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return ((pixels - mean) / std).unsqueeze(0)
