"""A tiny U²-Net stand-in for cjwbw/rembg: an ONNX model with u2net.onnx's signature,
written with the ``onnx`` package alone (no torch).

What rembg's u2net session relies on (``rembg/sessions/u2net.py``): the first input takes
the image as float32 NCHW ``(1, 3, 320, 320)``; the first output is read as
``outputs[0][:, 0, :, :]`` and min-max normalised into the mask. The real model has seven
outputs (the fused map ``d0`` first, then six side outputs); this one has two, so a
runner that read the wrong one would show.

The network is one 3x3 convolution (3 -> 1 channels, padding 1) and a sigmoid: its output
depends on every input pixel's neighbourhood, so the mask follows the image (a constant
output would make rembg's min-max normalisation divide by zero).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from pathlib import Path

INPUT_NAME = "input.1"
OUTPUT_NAMES = ("d0", "d1")
SIDE = 320
# u2net.onnx is an opset-11 export; 17 keeps to operators every onnxruntime since 1.12 runs.
OPSET = 17
IR_VERSION = 8
FILE_NAME = "u2net.onnx"


def conv_weights(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The convolution's weight ``(1, 3, 3, 3)`` and bias ``(1,)``, from ``seed``."""
    rng = np.random.default_rng(seed)
    weight = rng.normal(0.0, 0.5, (1, 3, 3, 3)).astype(np.float32)
    bias = rng.normal(0.0, 0.1, (1,)).astype(np.float32)
    return weight, bias


def u2net(target: Path, seed: int = 40) -> None:
    """Write ``target/u2net.onnx``, the file the rembg runner loads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight, bias = conv_weights(seed)
    image = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [1, 3, SIDE, SIDE])
    outputs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 1, SIDE, SIDE])
        for name in OUTPUT_NAMES
    ]
    nodes = [
        helper.make_node(
            "Conv", [INPUT_NAME, "conv.weight", "conv.bias"], ["logits"], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Sigmoid", ["logits"], [OUTPUT_NAMES[0]]),
        # A side output that is not the mask: its inverse.
        helper.make_node("Neg", ["logits"], ["negated"]),
        helper.make_node("Sigmoid", ["negated"], [OUTPUT_NAMES[1]]),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny-u2net",
        [image],
        outputs,
        initializer=[
            numpy_helper.from_array(weight, "conv.weight"),
            numpy_helper.from_array(bias, "conv.bias"),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="repligate.testing.tiny_rembg",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    target.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(target / FILE_NAME))
