"""Tiny random weights for sujaykhandekar/object-removal, in the published files' layout.

The three files have the real names and the real state-dict keys: torchvision's
DeepLabV3-ResNet101 (with its auxiliary head) and EdgeConnect's generator checkpoints
(``{"iteration", "generator"}``). Only the channel widths are tiny. The depths cannot
shrink without changing the keys, so they stay real: ResNet-101's 3+4+23+3 bottlenecks
and EdgeConnect's 8 residual blocks. The runner reads widths from the weights, so these
load through the same code as the published files.
"""

from __future__ import annotations

from pathlib import Path

# DeepLab: a 4-channel stem (ResNet's is 64), so layer4 gives 128 features (2048), and an
# 8-channel ASPP (256). EdgeConnect: 4 base channels (64).
DEEPLAB_WIDTH = 4
DEEPLAB_HEAD = 8
EDGECONNECT_WIDTH = 4


def object_removal(target: Path, seed: int = 30) -> None:
    import torch

    from repligate.runners.deeplab import WEIGHTS_FILE, DeepLabV3
    from repligate.runners.edgeconnect import (
        EDGE_WEIGHTS_FILE,
        INPAINT_WEIGHTS_FILE,
        EdgeGenerator,
        InpaintGenerator,
    )

    target.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    segmentation = DeepLabV3(width=DEEPLAB_WIDTH, head=DEEPLAB_HEAD)
    with torch.no_grad():
        # No constant offsets (batch-norm shifts, class biases): with random weights they
        # swamp what the image contributes, and every pixel would get the same class. So
        # the mask follows the image, and several classes appear in one picture.
        for module in segmentation.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.0)
                module.bias.zero_()
        last = segmentation.classifier[4]
        assert isinstance(last, torch.nn.Conv2d) and last.bias is not None
        last.bias.zero_()
    torch.save(segmentation.state_dict(), target / WEIGHTS_FILE)
    for generator, name in (
        (EdgeGenerator(width=EDGECONNECT_WIDTH), EDGE_WEIGHTS_FILE),
        (InpaintGenerator(width=EDGECONNECT_WIDTH), INPAINT_WEIGHTS_FILE),
    ):
        torch.save({"iteration": 0, "generator": generator.state_dict()}, target / name)
