"""GIF and MP4 encoding (storage/encode.py): frames go in one at a time, and what comes out
is what a viewer reads back: frame count, size, durations, looping, codec, moov first."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from repligate.storage import encode
from tests.video_helpers import gif_frames, gif_loop, mp4_frames, top_level_boxes


def frames(count: int, width: int = 64, height: int = 48) -> list[Image.Image]:
    """Frames that differ from each other (a bright bar moving right over noise)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(count):
        pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
        pixels[:, i * 3 : i * 3 + 4] = 250
        out.append(Image.fromarray(pixels))
    return out


@pytest.mark.parametrize(("fps", "ms"), [(8, 120), (10, 100), (24, 40), (1, 1000)])
def test_a_gif_loops_forever_with_each_frame_lasting_1000_over_fps(fps: int, ms: int) -> None:
    made = encode.gif(iter(frames(5)), "out.gif", fps)
    assert made.content_type == "image/gif"
    assert made.name == "out.gif"
    read = gif_frames(made.data)
    assert [pixels.shape for pixels, _ in read] == [(48, 64, 3)] * 5
    assert [duration for _, duration in read] == [ms] * 5
    assert gif_loop(made.data) == 0


def test_gif_frames_keep_their_pictures() -> None:
    sent = frames(4)
    read = gif_frames(encode.gif(sent, "out.gif", 8).data)
    assert len(read) == 4
    for index, (original, (pixels, _)) in enumerate(zip(sent, read, strict=True)):
        got = pixels.astype(np.int16)
        # The palette is adaptive: colours move a little, the moving bar stays where it was.
        assert np.abs(got - np.asarray(original, dtype=np.int16)).mean() < 12
        assert got[:, index * 3 + 1].mean() > 200


def test_an_mp4_is_h264_yuv420p_with_the_moov_atom_before_the_media() -> None:
    made = encode.mp4(iter(frames(16)), "out.mp4", 8, x264={"qp": "17"})
    assert made.content_type == "video/mp4"
    boxes = top_level_boxes(made.data)
    assert boxes[0] == "ftyp"
    assert boxes.index("moov") < boxes.index("mdat")
    with av.open(io.BytesIO(made.data)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert stream.average_rate == 8
        assert stream.frames == 16
    pictures = mp4_frames(made.data)
    assert len(pictures) == 16
    assert pictures[0].shape == (48, 64, 3)
    # The frames come back in order: the bar has moved right in each.
    for index in (0, 5, 10, 15):
        brightest = int(np.argmax(pictures[index].mean(axis=(0, 2))))
        assert index * 3 <= brightest <= index * 3 + 3


def test_the_writers_take_frames_one_at_a_time() -> None:
    for writer in (encode.video_writer("gif", 8), encode.video_writer("mp4", 8)):
        for frame in frames(3):
            writer.add_frame(frame)
        assert writer.frame_count == 3
        made = writer.finish("out")
        assert len(made.data) > 0
        with pytest.raises(ValueError, match="closed"):
            writer.add_frame(frames(1)[0])


def test_bad_frames_and_formats_are_refused() -> None:
    with pytest.raises(ValueError, match="even sides"):
        encode.mp4(frames(2, width=63), "out.mp4", 8)
    with pytest.raises(ValueError, match="not"):
        encode.gif([*frames(1), *frames(1, width=32)], "out.gif", 8)
    with pytest.raises(ValueError, match="not"):
        encode.mp4([*frames(1), *frames(1, width=32)], "out.mp4", 8)
    with pytest.raises(ValueError, match="at least one frame"):
        encode.mp4([], "out.mp4", 8)
    with pytest.raises(ValueError, match="at least one frame"):
        encode.gif([], "out.gif", 8)
    with pytest.raises(ValueError, match="gif or mp4"):
        encode.video_writer("webm", 8)
    with pytest.raises(ValueError, match="positive"):
        encode.video_writer("gif", 0)


def test_a_closed_mp4_writer_leaves_no_temporary_file() -> None:
    writer = encode.Mp4Writer(8)
    writer.add_frame(frames(1)[0])
    folder = writer._path.parent
    assert folder.exists()
    writer.close()
    assert not folder.exists()


@pytest.mark.parametrize(
    ("name", "content_type"), [("out.gif", "image/gif"), ("out.mp4", "video/mp4")]
)
def test_videos_are_served_with_their_content_type(
    client: TestClient, name: str, content_type: str
) -> None:
    made = encode.video_writer(name.rsplit(".", 1)[1], 8)
    for frame in frames(2):
        made.add_frame(frame)
    output = made.finish(name)
    assert output.content_type == content_type
    storage = client.app.state.container.storage  # type: ignore[attr-defined]
    storage.put(f"predictions/p-video/{name}", output.data, output.content_type)
    response = client.get(f"/files/predictions/p-video/{name}")
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    assert response.content == output.data
