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
    import torch

    name = requested
    if name is None:
        if torch.cuda.is_available():
            name = "cuda"
        elif torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    dtype = "float32" if name == "cpu" else "float16"
    return DeviceChoice(name=name, dtype_name=dtype)
