"""Encoding model outputs into files (PNG today; more formats come with their models)."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Iterable, Mapping
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from repligate.events import OutputFile

if TYPE_CHECKING:
    from PIL.Image import Image


def png(image: Image, name: str, compress_level: int = 4) -> OutputFile:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return OutputFile(name=name, data=buffer.getvalue(), content_type="image/png")


def webp(image: Image, name: str, quality: int = 80) -> OutputFile:
    """Lossy WebP at ``quality`` (0-100), as the Flux originals save their outputs."""
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=quality, method=4)
    return OutputFile(name=name, data=buffer.getvalue(), content_type="image/webp")


def jpeg(image: Image, name: str, quality: int = 80) -> OutputFile:
    """Baseline JPEG at ``quality`` (0-100), with optimised Huffman tables as the Flux
    originals save it. Images with alpha are flattened to RGB (JPEG has no alpha)."""
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=quality, optimize=True)
    return OutputFile(name=name, data=buffer.getvalue(), content_type="image/jpeg")


# --- Video: GIF and MP4, written one frame at a time -------------------------------------
# Animation runners hand each frame over as soon as it is decoded, so a run never keeps
# all its frames as full-size tensors: the GIF writer keeps only the compressed bytes,
# the MP4 writer hands each frame to the H.264 encoder.

GIF_CONTENT_TYPE = "image/gif"
MP4_CONTENT_TYPE = "video/mp4"


class VideoWriter(Protocol):
    """An animation being encoded: frames go in one at a time, the file comes out once."""

    frame_count: int

    def add_frame(self, image: Image) -> None: ...

    def finish(self, name: str) -> OutputFile:
        """The encoded file; the writer is closed afterwards."""
        ...

    def close(self) -> None:
        """Drop what was written (e.g. on cancel); finishing closes too."""
        ...


def gif_frame_ms(fps: float) -> int:
    """A frame's duration as the originals give it to Pillow: ``int(1000 / fps)`` ms (GIF
    keeps hundredths of a second, so 8 fps is stored as 120 ms, as on Replicate)."""
    if fps <= 0:
        raise ValueError(f"frames per second must be positive, not {fps}")
    return int(1000 / fps)


class GifWriter:
    """An animated GIF that loops forever, made with Pillow's GIF encoder.

    Each frame is quantised (Pillow's adaptive palette, as ``Image.save`` does for RGB)
    and LZW-compressed as it arrives, with its own colour table; only the compressed bytes
    are kept."""

    def __init__(self, fps: float, *, loop: int = 0) -> None:
        self.duration_ms = gif_frame_ms(fps)
        self.loop = loop
        self.frame_count = 0
        self._size: tuple[int, int] | None = None
        self._buffer: io.BytesIO | None = io.BytesIO()

    def add_frame(self, image: Image) -> None:
        from PIL import GifImagePlugin
        from PIL import Image as PILImage

        buffer = self._open_buffer()
        frame = image.convert("RGB").convert("P", palette=PILImage.Palette.ADAPTIVE)
        if self._size is None:
            self._size = frame.size
            header, _ = GifImagePlugin.getheader(
                frame.copy(), info={"loop": self.loop, "duration": self.duration_ms}
            )
            buffer.writelines(header)
        elif frame.size != self._size:
            raise ValueError(f"frame {self.frame_count} is {frame.size}, not {self._size}")
        chunks = GifImagePlugin.getdata(frame, duration=self.duration_ms, include_color_table=True)
        buffer.writelines(chunks)
        self.frame_count += 1

    def finish(self, name: str) -> OutputFile:
        buffer = self._open_buffer()
        if self.frame_count == 0:
            raise ValueError("an animation needs at least one frame")
        buffer.write(b";")  # GIF trailer
        data = buffer.getvalue()
        self.close()
        return OutputFile(name=name, data=data, content_type=GIF_CONTENT_TYPE)

    def close(self) -> None:
        self._buffer = None

    def _open_buffer(self) -> io.BytesIO:
        if self._buffer is None:
            raise ValueError("this GIF writer is closed")
        return self._buffer

    def __enter__(self) -> GifWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Mp4Writer:
    """An H.264 MP4 through PyAV (libx264 ships inside its wheel: no system ffmpeg),
    yuv420p so every browser decodes it, and the moov atom first (``faststart``) so it
    starts playing before it has downloaded. Frames are encoded as they arrive, into a
    temporary file: faststart rewrites the finished file, which needs a real path.

    ``x264`` are libx264's options, e.g. ``{"qp": "17"}`` (lucataco/animate-diff's
    ffmpeg call) or ``{"crf": "17", "tune": "film"}``. Sides must be even (yuv420p)."""

    def __init__(self, fps: float, *, x264: Mapping[str, str] | None = None) -> None:
        if fps <= 0:
            raise ValueError(f"frames per second must be positive, not {fps}")
        self.rate = Fraction(fps).limit_denominator(1001)
        self.x264 = dict(x264 if x264 is not None else {"crf": "17"})
        self.frame_count = 0
        self._dir: tempfile.TemporaryDirectory[str] | None = tempfile.TemporaryDirectory(
            prefix="repligate-mp4-"
        )
        self._path = Path(self._dir.name, "out.mp4")
        self._container: Any = None
        self._stream: Any = None

    def add_frame(self, image: Image) -> None:
        import av

        if self._dir is None:
            raise ValueError("this MP4 writer is closed")
        if self._container is None:
            self._start(image.width, image.height)
        elif image.size != (self._stream.width, self._stream.height):
            size = (self._stream.width, self._stream.height)
            raise ValueError(f"frame {self.frame_count} is {image.size}, not {size}")
        frame = av.VideoFrame.from_image(image.convert("RGB"))
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frame_count += 1

    def _start(self, width: int, height: int) -> None:
        import av

        if width % 2 or height % 2:
            raise ValueError(f"an H.264 yuv420p video needs even sides, not {width}x{height}")
        self._container = av.open(
            str(self._path), mode="w", format="mp4", container_options={"movflags": "+faststart"}
        )
        stream = self._container.add_stream("libx264", rate=self.rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = self.x264
        self._stream = stream

    def finish(self, name: str) -> OutputFile:
        if self._dir is None:
            raise ValueError("this MP4 writer is closed")
        if self._container is None:
            raise ValueError("an animation needs at least one frame")
        for packet in self._stream.encode():  # flush the frames the encoder still holds
            self._container.mux(packet)
        self._container.close()
        self._container = None
        data = self._path.read_bytes()
        self.close()
        return OutputFile(name=name, data=data, content_type=MP4_CONTENT_TYPE)

    def close(self) -> None:
        if self._container is not None:
            self._container.close()
            self._container = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def __enter__(self) -> Mp4Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def video_writer(output_format: str, fps: float) -> VideoWriter:
    """A writer for ``"gif"`` or ``"mp4"`` (H.264, crf 17)."""
    if output_format == "gif":
        return GifWriter(fps)
    if output_format == "mp4":
        return Mp4Writer(fps)
    raise ValueError(f"unknown video format {output_format!r}: use gif or mp4")


def gif(frames: Iterable[Image], name: str, fps: float) -> OutputFile:
    """All of ``frames`` (taken one at a time) as a GIF that loops forever."""
    with GifWriter(fps) as writer:
        for frame in frames:
            writer.add_frame(frame)
        return writer.finish(name)


def mp4(
    frames: Iterable[Image], name: str, fps: float, *, x264: Mapping[str, str] | None = None
) -> OutputFile:
    """All of ``frames`` (taken one at a time) as an H.264 MP4 that plays in a browser."""
    with Mp4Writer(fps, x264=x264) as writer:
        for frame in frames:
            writer.add_frame(frame)
        return writer.finish(name)
