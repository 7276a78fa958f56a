"""Reading videos back as a viewer does, for tests of animation outputs."""

from __future__ import annotations

import io

import av
import numpy as np
from PIL import Image, ImageSequence


def gif_frames(data: bytes) -> list[tuple[np.ndarray, int]]:
    """Each frame of a GIF as RGB pixels, with its duration in ms."""
    gif = Image.open(io.BytesIO(data))
    assert gif.format == "GIF"
    return [
        (np.asarray(frame.convert("RGB")), int(frame.info["duration"]))
        for frame in ImageSequence.Iterator(gif)
    ]


def gif_loop(data: bytes) -> int | None:
    """The GIF's loop count (0 = forever); None when it plays once."""
    loop = Image.open(io.BytesIO(data)).info.get("loop")
    return None if loop is None else int(loop)


def mp4_frames(data: bytes) -> list[np.ndarray]:
    """Every decoded frame of a video, as RGB pixels (height x width x 3)."""
    with av.open(io.BytesIO(data), mode="r") as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def top_level_boxes(data: bytes) -> list[str]:
    """The MP4's top-level box types in file order (``moov`` before ``mdat``: faststart)."""
    boxes, at = [], 0
    while at + 8 <= len(data):
        size = int.from_bytes(data[at : at + 4], "big")
        boxes.append(data[at + 4 : at + 8].decode("latin-1"))
        if size < 8:
            break
        at += size
    return boxes
