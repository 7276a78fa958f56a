"""``repligate predict`` against a live server: the CLI goes through the HTTP API."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from PIL import Image
from typer.testing import CliRunner

from repligate.app import create_app
from repligate.cli import app
from repligate.remote import RemoteError, download, parse_input
from repligate.settings import Settings
from repligate.testing.live_server import LiveServer
from tests.conftest import SD_REF


@pytest.fixture
def server(settings: Settings) -> Iterator[LiveServer]:
    with LiveServer(create_app(settings)) as live:
        yield live


def _predict(server: LiveServer, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        app,
        ["predict", *args],
        env={"REPLIGATE_URL": server.url, "REPLIGATE_TOKEN": server.make_token()},
    )
    return result.exit_code, result.stdout, result.stderr


def test_predict_saves_the_outputs_and_prints_their_paths(
    server: LiveServer, tmp_path: Path
) -> None:
    code, out, err = _predict(
        server,
        SD_REF,
        *("-i", "prompt=a red fox", "-i", "width=128", "-i", "height=64"),
        *("-i", "num_inference_steps=2", "-i", "num_outputs=2", "-i", "seed=7"),
        *("-o", str(tmp_path / "out")),
    )
    assert code == 0, err
    paths = [Path(line) for line in out.splitlines()]
    assert [p.name for p in paths] == ["out-0.png", "out-1.png"]
    [folder] = {p.parent for p in paths}
    assert folder.parent == tmp_path / "out"
    assert sorted(folder.iterdir()) == paths
    for path in paths:
        assert Image.open(path).size == (128, 64)
    assert "Using seed: 7" in err
    assert "100%|" in err


def test_a_second_prediction_never_overwrites_the_first(server: LiveServer, tmp_path: Path) -> None:
    out_dir = tmp_path / "out"
    runs = []
    for colour in ("red", "blue"):
        code, out, err = _predict(
            server,
            SD_REF,
            *("-i", f"prompt=a {colour} fox", "-i", "width=64", "-i", "height=64"),
            *("-i", "num_inference_steps=2", "-o", str(out_dir)),
        )
        assert code == 0, err
        [path] = [Path(line) for line in out.splitlines()]
        runs.append((path, path.read_bytes()))
    (first, first_bytes), (second, second_bytes) = runs
    assert first != second and first.parent != second.parent
    # Each prediction's file is still there, as it was written.
    assert first.read_bytes() == first_bytes and second.read_bytes() == second_bytes
    assert sorted(p.relative_to(out_dir) for p in out_dir.rglob("*.png")) == sorted(
        p.relative_to(out_dir) for p in (first, second)
    )


def test_download_takes_a_free_name_and_keeps_names_plain(tmp_path: Path) -> None:
    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=request.url.path.encode())

    urls = [
        "http://server/files/out-0.png",
        "http://server/other/out-0.png",  # the same name again
        "http://server/files/..%2F..%2Fescape.png",
        "http://server/files/.hidden",
    ]
    existing = tmp_path / "p1" / "out-0-1.png"  # from an earlier run
    existing.parent.mkdir()
    existing.write_bytes(b"earlier")
    with httpx.Client(transport=httpx.MockTransport(serve)) as client:
        saved = download(client, "p1", urls, tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in saved] == [
        "p1/out-0.png",
        "p1/out-0-2.png",
        "p1/escape.png",
        "p1/output-3",
    ]
    assert saved[1].read_bytes() == b"/other/out-0.png"
    assert existing.read_bytes() == b"earlier"


def test_predict_by_model_name_with_a_file_input(server: LiveServer, tmp_path: Path) -> None:
    picture = tmp_path / "in.png"
    Image.new("RGB", (96, 64), (200, 30, 30)).save(picture)
    code, out, err = _predict(
        server,
        "stability-ai/stable-diffusion-img2img",
        *("-i", f"image=@{picture}", "-i", "num_inference_steps=2"),
        *("-o", str(tmp_path / "out")),
    )
    assert code == 0, err
    [path] = [Path(line) for line in out.splitlines()]
    assert Image.open(path).size == (96, 64)


def test_predict_shows_validation_errors_and_fails(server: LiveServer) -> None:
    code, out, err = _predict(server, SD_REF, "-i", "num_outputs=9", "-i", "bogus=1")
    assert code == 1
    assert out == ""
    assert "HTTP 422" in err
    assert "input.num_outputs" in err and "Additional property bogus" in err


def test_predict_needs_a_token() -> None:
    result = CliRunner().invoke(app, ["predict", SD_REF], env={"REPLIGATE_TOKEN": ""})
    assert result.exit_code == 2
    assert "API key" in result.stderr


def test_inputs_parse_as_json_else_text_and_files_as_data_uris(tmp_path: Path) -> None:
    blob = tmp_path / "mask.png"
    buffer = io.BytesIO()
    Image.new("L", (4, 4), 255).save(buffer, format="PNG")
    blob.write_bytes(buffer.getvalue())
    parsed = parse_input(["steps=4", "scale=7.5", "flag=true", "prompt=a fox", f"mask=@{blob}"])
    assert parsed["steps"] == 4 and parsed["scale"] == 7.5 and parsed["flag"] is True
    assert parsed["prompt"] == "a fox"
    assert parsed["mask"] == "data:image/png;base64," + base64.b64encode(blob.read_bytes()).decode()
    with pytest.raises(RemoteError, match="not key=value"):
        parse_input(["oops"])
    with pytest.raises(RemoteError, match="no such file"):
        parse_input([f"image=@{tmp_path / 'missing.png'}"])
