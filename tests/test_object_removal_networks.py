"""object-removal's networks, rebuilt without torchvision: the tiny weights (and so the
loaders) use the published files' keys, spectral normalisation matches torch's, and the
original's mask steps (gap closing, resize for segmentation) behave as the original's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from repligate.runners.deeplab import DeepLabV3, preprocess
from repligate.runners.edgeconnect import EdgeGenerator, InpaintGenerator, SpectralNormConv
from repligate.runners.object_removal import close_gaps

KEY = "sujaykhandekar__object-removal"
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def torchvision_deeplabv3_resnet101_keys() -> set[str]:
    """The keys of torchvision's deeplabv3_resnet101 checkpoint, written out from its
    architecture: ResNet-101 (3, 4, 23, 3 bottlenecks, a downsample in each stage's first),
    the DeepLab head (ASPP with 1x1, three dilated 3x3 and a pooling branch) and the FCN
    auxiliary head."""

    def bn(prefix: str) -> list[str]:
        return [f"{prefix}.{name}" for name in BN]

    keys = ["backbone.conv1.weight", *bn("backbone.bn1")]
    for stage, blocks in enumerate((3, 4, 23, 3), start=1):
        for block in range(blocks):
            prefix = f"backbone.layer{stage}.{block}"
            for i in (1, 2, 3):
                keys += [f"{prefix}.conv{i}.weight", *bn(f"{prefix}.bn{i}")]
            if block == 0:
                keys += [f"{prefix}.downsample.0.weight", *bn(f"{prefix}.downsample.1")]
    for branch in range(4):
        keys += [f"classifier.0.convs.{branch}.0.weight", *bn(f"classifier.0.convs.{branch}.1")]
    keys += ["classifier.0.convs.4.1.weight", *bn("classifier.0.convs.4.2")]
    keys += ["classifier.0.project.0.weight", *bn("classifier.0.project.1")]
    keys += ["classifier.1.weight", *bn("classifier.2"), "classifier.4.weight", "classifier.4.bias"]
    keys += ["aux_classifier.0.weight", *bn("aux_classifier.1")]
    keys += ["aux_classifier.4.weight", "aux_classifier.4.bias"]
    return set(keys)


def edgeconnect_keys(spectral: bool) -> set[str]:
    """The keys of EdgeConnect's generator checkpoints (src/networks.py): spectral norm
    turns ``weight`` into ``weight_orig``/``weight_u``/``weight_v``; under it the residual
    blocks' convolutions have no bias; the last convolution is never normalised."""

    def conv(prefix: str, bias: bool = True) -> list[str]:
        names = ["weight_orig", "weight_u", "weight_v"] if spectral else ["weight"]
        if bias:
            names.append("bias")
        return [f"{prefix}.{name}" for name in names]

    keys = conv("encoder.1") + conv("encoder.4") + conv("encoder.7")
    for block in range(8):
        for index in (1, 5):
            keys += conv(f"middle.{block}.conv_block.{index}", bias=not spectral)
    keys += conv("decoder.0") + conv("decoder.3") + ["decoder.7.weight", "decoder.7.bias"]
    return set(keys)


def test_tiny_deeplab_weights_have_torchvisions_keys(tiny_weights: Path) -> None:
    state = torch.load(
        tiny_weights / KEY / "deeplabv3_resnet101_coco-586e9e4e.pth", weights_only=True
    )
    expected = torchvision_deeplabv3_resnet101_keys()
    assert set(state) == expected
    # Tiny widths only: 21 Pascal VOC classes, 3 input channels.
    assert state["classifier.4.weight"].shape[:1] == (21,)
    assert state["aux_classifier.4.weight"].shape[:1] == (21,)
    assert state["backbone.conv1.weight"].shape[1:] == (3, 7, 7)


def test_full_size_deeplab_has_torchvisions_shapes() -> None:
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in DeepLabV3().state_dict().items()}
    assert set(shapes) == torchvision_deeplabv3_resnet101_keys()
    assert shapes["backbone.conv1.weight"] == (64, 3, 7, 7)
    assert shapes["backbone.layer3.22.conv2.weight"] == (256, 256, 3, 3)
    assert shapes["backbone.layer4.0.downsample.0.weight"] == (2048, 1024, 1, 1)
    assert shapes["classifier.0.convs.0.0.weight"] == (256, 2048, 1, 1)
    assert shapes["classifier.0.convs.3.0.weight"] == (256, 2048, 3, 3)
    assert shapes["classifier.0.project.0.weight"] == (256, 1280, 1, 1)
    assert shapes["classifier.4.weight"] == (21, 256, 1, 1)
    assert shapes["aux_classifier.0.weight"] == (256, 1024, 3, 3)


@pytest.mark.parametrize(
    ("name", "generator", "spectral", "first"),
    [
        ("EdgeModel_gen.pth", EdgeGenerator, True, (64, 3, 7, 7)),
        ("InpaintingModel_gen.pth", InpaintGenerator, False, (64, 4, 7, 7)),
    ],
)
def test_tiny_edgeconnect_checkpoints_have_the_published_layout(
    tiny_weights: Path, name: str, generator: type, spectral: bool, first: tuple[int, ...]
) -> None:
    checkpoint = torch.load(tiny_weights / KEY / name, weights_only=True)
    assert set(checkpoint) == {"iteration", "generator"}
    assert set(checkpoint["generator"]) == edgeconnect_keys(spectral)
    with torch.device("meta"):
        shapes = {key: tuple(t.shape) for key, t in generator().state_dict().items()}
    assert set(shapes) == edgeconnect_keys(spectral)
    assert shapes["encoder.1.weight_orig" if spectral else "encoder.1.weight"] == first


@pytest.mark.parametrize("transposed", [False, True])
def test_spectral_norm_conv_loads_torchs_spectral_norm_and_computes_the_same(
    transposed: bool,
) -> None:
    torch.manual_seed(0)
    layer = torch.nn.ConvTranspose2d if transposed else torch.nn.Conv2d
    reference = torch.nn.utils.spectral_norm(layer(6, 5, 4, stride=2, padding=1))
    reference.train()
    x = torch.randn(1, 6, 8, 8)
    for _ in range(3):  # power iterations move u and v away from their start
        reference(x)
    reference.eval()
    ours = SpectralNormConv(6, 5, 4, stride=2, padding=1, transposed=transposed)
    ours.load_state_dict(reference.state_dict())
    with torch.no_grad():
        assert torch.allclose(ours(x), reference(x), atol=1e-6)

    # A checkpoint from before PyTorch 1.0: the normalised weight instead of weight_v.
    old = dict(reference.state_dict())
    del old["weight_v"]
    old["weight"] = reference.weight.detach()
    older = SpectralNormConv(6, 5, 4, stride=2, padding=1, transposed=transposed)
    older.load_state_dict(old)
    with torch.no_grad():
        assert torch.allclose(older(x), reference(x), atol=1e-5)


def test_gaps_of_one_or_two_pixels_close_along_rows_then_columns() -> None:
    row = [255, 0, 255, 0, 0, 255, 0, 0, 0, 255]
    closed = close_gaps(np.array([row], dtype=np.uint8), axis=1)
    assert closed.tolist() == [[255, 255, 255, 255, 255, 255, 0, 0, 0, 255]]
    column = close_gaps(np.array([[255], [0], [255]], dtype=np.uint8), axis=0)
    assert column.ravel().tolist() == [255, 255, 255]
    # Matches are found before any is filled, and overlapping ones all count.
    assert close_gaps(np.array([[255, 0, 255, 0, 255]], np.uint8), 1).tolist() == [[255] * 5]


@pytest.mark.parametrize(
    ("size", "resized"),
    [
        ((64, 48), (533, 400)),
        ((30, 60), (400, 800)),
        ((400, 300), (533, 400)),
        ((500, 400), (500, 400)),
    ],
)
def test_segmentation_sees_the_image_at_a_short_side_of_400(
    size: tuple[int, int], resized: tuple[int, int]
) -> None:
    batch = preprocess(Image.new("RGB", size, (124, 116, 104)))
    assert tuple(batch.shape) == (1, 3, resized[1], resized[0])
    # ImageNet normalisation: the mean colour is ~0.
    assert batch.abs().max() < 0.01
