"""Device and dtype: CUDA in fp16 where present, else CPU in fp32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceChoice:
    name: str  # "cuda", "cuda:1", "mps", "cpu"
    dtype_name: str  # "float16" or "float32"

    @property
    def dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype_name)


def choose(requested: str | None = None) -> DeviceChoice:
    """The requested device, else the best torch sees; without torch (an install for ONNX
    models only) the CPU."""
    import importlib.util

    name = requested
    if name is None and importlib.util.find_spec("torch") is None:
        name = "cpu"
    if name is None:
        import torch

        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    dtype = "float32" if name == "cpu" else "float16"
    return DeviceChoice(name=name, dtype_name=dtype)


def memory_budget(choice: DeviceChoice) -> int:
    """Bytes of weights worth keeping loaded: 70% of a GPU (the rest is for activations),
    half the RAM on CPU."""
    import os

    if choice.name.startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(torch.device(choice.name)).total_memory * 0.7)
    return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)


def release_memory(choice: DeviceChoice) -> None:
    """After evicting pipelines: collect them now and give freed GPU memory back."""
    import gc

    gc.collect()
    if choice.name.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
