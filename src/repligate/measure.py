"""What an output holds, read from its files: still images and their pixels, frames and
seconds of animations and videos, and bytes. Used by usage.py; reads only headers where
the format allows (an animated image's frames are walked for their durations)."""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import IO, Any

from repligate.storage.base import Storage, keys_in

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Measured:
    """One output file: a still image (frames == 1, seconds == 0), an animation or a
    video (its frames and seconds), or neither (only bytes)."""

    bytes: int
    width: int = 0
    height: int = 0
    frames: int = 0
    seconds: float = 0.0

    @property
    def still(self) -> bool:
        return self.frames == 1 and self.seconds == 0.0


def measure_output(output: Any, storage: Storage) -> list[Measured]:
    """Every stored file the output (any JSON shape) names; a file that is gone or
    unreadable is skipped with a warning."""
    found = []
    for key in sorted(keys_in(output)):
        try:
            with storage.open(key) as stream:
                found.append(measure(stream))
        except FileNotFoundError:
            log.warning("usage: output file %s is gone; not measured", key)
    return found


def measure(stream: IO[bytes]) -> Measured:
    if not stream.seekable():
        stream = io.BytesIO(stream.read())
    stream.seek(0, io.SEEK_END)
    size = stream.tell()
    for reader in (_image, _video):
        stream.seek(0)
        try:
            measured = reader(stream, size)
        except Exception:
            measured = None
        if measured is not None:
            return measured
    return Measured(bytes=size)


def _image(stream: IO[bytes], size: int) -> Measured | None:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(stream)
    except UnidentifiedImageError:
        return None
    with image:
        width, height = image.size
        frames = int(getattr(image, "n_frames", 1))
        if frames == 1:
            return Measured(bytes=size, width=width, height=height, frames=1)
        milliseconds = 0
        for index in range(frames):
            image.seek(index)
            milliseconds += int(image.info.get("duration", 0) or 0)
        return Measured(size, width, height, frames, milliseconds / 1000)


def _video(stream: IO[bytes], size: int) -> Measured | None:
    try:
        import av
    except ImportError:  # the ML extra is not installed: bytes only
        return None
    with av.open(stream, mode="r") as container:
        if not container.streams.video:
            return None
        video = container.streams.video[0]
        frames = video.frames
        if not frames:  # a container that does not say: count them
            frames = sum(1 for packet in container.demux(video) if packet.size > 0)
        if video.duration is not None and video.time_base is not None:
            seconds = float(video.duration * video.time_base)
        else:
            seconds = (container.duration or 0) / 1_000_000
        context = video.codec_context
        return Measured(size, context.width, context.height, frames, seconds)
