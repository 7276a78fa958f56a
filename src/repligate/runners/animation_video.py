"""The animation's video: frames pulled one at a time into a GIF or an MP4 encoder."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from repligate.events import OutputFile

if TYPE_CHECKING:
    import numpy as np


def encode_video(format: str, frames: Iterable[np.ndarray], fps: int, name: str) -> OutputFile:
    """``frames`` (H x W x 3 uint8) as ``format`` ("gif" or "mp4") at ``fps``, as the
    original encodes them: GIF frames of int(1000 / fps) ms looping forever; H.264 MP4 at
    crf 17, tune film."""
    if format == "gif":
        return _gif(frames, fps, name)
    if format == "mp4":
        return _mp4(frames, fps, name)
    raise ValueError(f"unknown video format {format!r}")


def _gif(frames: Iterable[np.ndarray], fps: int, name: str) -> OutputFile:
    from PIL import Image

    pictures: Iterator[Image.Image] = (Image.fromarray(frame) for frame in frames)
    first = next(pictures)
    buffer = io.BytesIO()
    first.save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=pictures,
        duration=int(1000 / fps),
        loop=0,
    )
    return OutputFile(name=name, data=buffer.getvalue(), content_type="image/gif")


def _mp4(frames: Iterable[np.ndarray], fps: int, name: str) -> OutputFile:
    import av

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, name)
        with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as out:
            stream = None
            for frame in frames:
                if stream is None:
                    stream = out.add_stream("libx264", rate=fps)
                    stream.width, stream.height = frame.shape[1], frame.shape[0]
                    stream.pix_fmt = "yuv420p"
                    stream.options = {"crf": "17", "tune": "film"}
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    out.mux(packet)
            if stream is not None:
                for packet in stream.encode():
                    out.mux(packet)
        return OutputFile(name=name, data=path.read_bytes(), content_type="video/mp4")
