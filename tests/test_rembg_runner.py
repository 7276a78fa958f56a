"""cjwbw/rembg's runner: where its model file comes from, what it says when the file is
missing or wrong, one session per process counted in the pipeline cache, its thread
count, and a run in a process where torch cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from repligate.models import rembg
from repligate.runners.background_removal import MODEL_MD5, MODEL_URL
from repligate.runners.threads import ThreadPolicy
from repligate.settings import Settings
from repligate.testing import tiny_rembg
from tests.api_helpers import app_client
from tests.conftest import make_token
from tests.sd_family import data_uri, noise_image, predict

REF = f"cjwbw/rembg:{rembg.MODEL.version}"
INPUT = {"image": data_uri(noise_image(24, 16))}


@pytest.fixture
def rembg_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """rembg's home directory, empty: nothing from the machine's own ~/.u2net is found."""
    home = tmp_path / "u2net-home"
    home.mkdir()
    monkeypatch.setenv("U2NET_HOME", str(home))
    return home


def run_once(settings: Settings, weights_dir: Path) -> dict[str, object]:
    with app_client(settings, weights_dir=weights_dir) as client:
        auth = {"Authorization": f"Bearer {make_token(client)}"}
        return predict(client, auth, REF, INPUT)


def test_a_missing_model_file_fails_saying_where_to_put_it(
    settings: Settings, tmp_path: Path, rembg_home: Path
) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    body = run_once(settings, weights)
    assert body["status"] == "failed"
    assert body["error"] == (
        "The weights of cjwbw/rembg are not available: u2net.onnx was not found, and this "
        "server never downloads it while serving.\n"
        f"Put it at {weights}/cjwbw__rembg/u2net.onnx, or in rembg's home directory as "
        f"{rembg_home}/u2net.onnx. It is {MODEL_URL} (md5 {MODEL_MD5}). To try the API "
        "without it, `make demo` serves tiny random weights."
    )


def test_the_file_in_rembgs_home_is_used_when_the_weights_dir_has_none(
    settings: Settings, tmp_path: Path, rembg_home: Path
) -> None:
    tiny_rembg.u2net(rembg_home)
    empty = tmp_path / "weights"
    empty.mkdir()
    body = run_once(settings, empty)
    assert body["status"] == "succeeded", body["error"]
    # No random-weights marker beside a file in rembg's home.
    assert body["logs"] == ""


@pytest.mark.parametrize(
    ("write", "why"),
    [
        (lambda path: path.write_bytes(b"not a model"), "INVALID_PROTOBUF"),
        (
            lambda path: _model_with_input_shape(path, [1, 1, 64, 64]),
            "(its first input has shape [1, 1, 64, 64], not [1, 3, 320, 320])",
        ),
    ],
    ids=["not-onnx", "another-signature"],
)
def test_a_file_that_is_not_u2net_fails_saying_so(
    settings: Settings, tmp_path: Path, rembg_home: Path, write: object, why: str
) -> None:
    path = tmp_path / "weights" / "cjwbw__rembg" / "u2net.onnx"
    path.parent.mkdir(parents=True)
    write(path)  # type: ignore[operator]
    body = run_once(settings, tmp_path / "weights")
    assert body["status"] == "failed"
    error = str(body["error"])
    assert error.startswith(
        f"The weights of cjwbw/rembg are not available: {path} is not a U²-Net ONNX model "
        "rembg can use "
    ), error
    assert why in error
    assert error.endswith(f"Replace it with {MODEL_URL} (md5 {MODEL_MD5}).")


def _model_with_input_shape(path: Path, shape: list[int]) -> None:
    from onnx import TensorProto, helper, save

    graph = helper.make_graph(
        [helper.make_node("Sigmoid", ["x"], ["y"])],
        "not-u2net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save(model, str(path))


def test_one_session_serves_every_prediction_and_counts_in_the_pipeline_cache(
    client: TestClient, auth: dict[str, str], tiny_weights: Path, fixed_torch_threads: int
) -> None:
    for _ in range(2):
        assert predict(client, auth, REF, INPUT)["status"] == "succeeded"
    provider = client.app.state.container.provider  # type: ignore[attr-defined]
    runner = provider.runner(rembg.MODEL)
    loaded = runner.session()
    assert runner.session() is loaded
    assert provider.loaded() == ["cjwbw/rembg"]
    model_file = tiny_weights / "cjwbw__rembg" / "u2net.onnx"
    assert loaded.path == model_file
    assert provider.env().pipelines.held_bytes() == model_file.stat().st_size
    # REPLIGATE_TORCH_THREADS (fixed by the test settings) is the session's count too.
    options = loaded.session.inner_session.get_session_options()
    assert options.intra_op_num_threads == fixed_torch_threads == loaded.threads


def test_the_session_thread_count_is_the_workers_share_of_the_cores() -> None:
    assert ThreadPolicy(cores=8, workers=2).share() == 4
    assert ThreadPolicy(cores=8, workers=3).share() == 2
    assert ThreadPolicy(cores=2, workers=4).share() == 1
    # torch's own cap (its physical cores) and a fixed count are kept to.
    assert ThreadPolicy(cores=8, most=4).share() == 4
    assert ThreadPolicy(fixed=3, cores=8, workers=2).share() == 3


_WITHOUT_TORCH = textwrap.dedent(
    """
    import io, json, sys
    from pathlib import Path

    # Importing any of these now raises ImportError, and find_spec says they are missing.
    for name in ("torch", "diffusers", "transformers"):
        sys.modules[name] = None

    from fastapi.testclient import TestClient
    from PIL import Image
    from repligate.app import create_app
    from repligate.settings import Settings
    from tests.api_helpers import finished
    from tests.conftest import make_token
    from tests.sd_family import data_uri, noise_image

    data, weights = Path(sys.argv[1]), Path(sys.argv[2])
    settings = Settings(data_dir=data, weights_dir=weights, public_base_url=None)
    with TestClient(create_app(settings)) as client:
        auth = {"Authorization": "Bearer " + make_token(client)}
        created = client.post(
            "/v1/predictions",
            json={"version": "cjwbw/rembg", "input": {"image": data_uri(noise_image(30, 20))}},
            headers=auth,
        )
        body = finished(client, created.json()["urls"]["get"], auth)
        size = mode = None
        if body["status"] == "succeeded":
            with Image.open(io.BytesIO(client.get(body["output"]).content)) as out:
                size, mode = list(out.size), out.mode
    loaded = sorted(m for m in sys.modules if m.split(".")[0] == "torch" and sys.modules[m])
    print(json.dumps({"status": body["status"], "error": body["error"], "size": size,
                      "mode": mode, "torch_modules": loaded}))
    """
)


def test_rembg_runs_where_torch_cannot_be_imported(tmp_path: Path, tiny_weights: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    (weights / "cjwbw__rembg").symlink_to(tiny_weights / "cjwbw__rembg")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_TORCH, str(tmp_path / "data"), str(weights)],
        capture_output=True,
        text=True,
        env=env,
        cwd=Path(__file__).parent.parent,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {
        "status": "succeeded",
        "error": None,
        "size": [30, 20],
        "mode": "RGBA",
        "torch_modules": [],
    }
