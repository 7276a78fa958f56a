"""cjwbw/rembg: U²-Net background removal through the ``rembg`` library on onnxruntime.

What the original does (chenxwh/rembg, branch ``replicate``): ``Image.open`` of the input,
with no RGB conversion and no EXIF rotation, then ``rembg.remove(image)`` with every
default (the ``u2net`` model, no alpha matting, no mask post-processing), saved as
``/tmp/out.png``. So the output is one RGBA PNG named ``out.png`` of the input's stored
size, its alpha the model's mask, its colours composited over transparent black.

Here the same ``remove`` runs with the same defaults, with three differences that change
no pixel:
- the model file is never downloaded at run time: it is ``u2net.onnx`` in
  ``REPLIGATE_WEIGHTS_DIR/cjwbw__rembg/``, or in rembg's own home directory (``U2NET_HOME``,
  ``~/.u2net``, ``REMBG_HOME/models/u2net``) when it is there; missing, the prediction fails
  saying where to put it;
- the onnxruntime session is created once per process and kept in the pipeline cache
  (counted at the model file's size), where the original built one per call;
- its thread count is this worker's CPU share (``ThreadPolicy.share``), set when the
  session is made: onnxruntime cannot change it per run.
rembg 2.0.86 rotates images by their EXIF orientation where the original's rembg did not,
so the orientation tag is dropped first: the output keeps the stored orientation, as on
Replicate.

No torch here (nor at this module's import): an install with only the ``rembg`` extra runs
this model.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repligate.errors import PredictionFailure
from repligate.events import Canceled, Log
from repligate.runners.weights import WeightsUnavailable
from repligate.storage import encode

if TYPE_CHECKING:
    from PIL.Image import Image

    from repligate.events import OutputFile
    from repligate.fetch import FetchedFile
    from repligate.models.spec import ModelSpec
    from repligate.runners.base import RunContext, RunnerEnv

MODEL_FILE = "u2net.onnx"
MODEL_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/u2net.onnx"
MODEL_MD5 = "60024c5c889badc19c04ad937298a77b"
# U²-Net's input: the image resized to 320x320, NCHW.
INPUT_SIDE = 320
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class LoadedSession:
    """A rembg session kept in the pipeline cache. onnxruntime's memory cannot be measured
    from outside: it counts as its model file's size (the weights dominate)."""

    session: Any  # rembg's U2netSession around an onnxruntime InferenceSession
    path: Path
    threads: int
    memory_bytes: int


class U2NetBackgroundRemovalRunner:
    def __init__(self, env: RunnerEnv, spec: ModelSpec) -> None:
        self.env = env
        self.spec = spec

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> OutputFile:
        image_file: FetchedFile | str = inputs.get("image") or ""
        if isinstance(image_file, str):
            # The schema's default is "" (the original fails on it at run time); create
            # refuses it already (models/rembg.py), this is for callers of the runner.
            raise PredictionFailure("image: an input image is required")
        # The input first: a bad image is the caller's to fix, whatever the weights.
        image = without_orientation(image_file.image(exif_transpose=False, mode=None))
        loaded = self.session()
        if self.env.weights.is_random(self.spec):
            ctx.emit(Log("Note: this server runs tiny random weights; outputs are noise."))
        if ctx.canceled():
            raise Canceled()
        from rembg import remove

        cutout = remove(image, session=loaded.session)
        return encode.png(cutout, "out.png", self.env.png_compress_level)

    def session(self) -> LoadedSession:
        loaded: LoadedSession = self.env.pipelines.get(self.spec.key, self._load)
        return loaded

    def model_file(self) -> Path:
        """Where ``u2net.onnx`` is: the weights dir first, then rembg's home."""
        local = self.env.weights.local_dir(self.spec)
        if local is not None and (local / MODEL_FILE).is_file():
            return local / MODEL_FILE
        found = _session_class().resolve_existing(MODEL_FILE)
        if found is not None and Path(found).is_file():
            return Path(found)
        raise self._missing()

    def _missing(self) -> WeightsUnavailable:
        weights_dir = self.env.weights.weights_dir
        if weights_dir is None:
            where = f"$REPLIGATE_WEIGHTS_DIR/{self.spec.key}/{MODEL_FILE} (set the variable)"
        else:
            where = str(weights_dir / self.spec.key / MODEL_FILE)
        home = _session_class().legacy_home()
        return WeightsUnavailable(
            f"The weights of {self.spec.ref} are not available: {MODEL_FILE} was not found, "
            "and this server never downloads it while serving.\n"
            f"Put it at {where}, or in rembg's home directory as {Path(home) / MODEL_FILE}. "
            f"It is {MODEL_URL} (md5 {MODEL_MD5}). To try the API without it, `make demo` "
            "serves tiny random weights."
        )

    def _load(self) -> LoadedSession:
        import onnxruntime as ort

        path = self.model_file()
        threads = self.env.threads.share()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # Idle pool threads sleep instead of spinning: a spinning thread on a core another
        # process needs slows every operator down (runners/threads.py says why).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = _session_class()(
                "u2net", options, providers=self._providers(ort), model_path=str(path)
            )
        except Exception as exc:
            raise self._unloadable(path, _first_line(exc)) from None
        problem = _signature_problem(session.inner_session)
        if problem is not None:
            raise self._unloadable(path, problem)
        return LoadedSession(session, path, threads, path.stat().st_size)

    def _providers(self, ort: Any) -> list[Any]:
        """onnxruntime's CUDA provider on the server's CUDA device where this onnxruntime
        has it (onnxruntime-gpu), else the CPU."""
        device = self.env.device.name
        if device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            index = int(device.partition(":")[2] or 0)
            return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def _unloadable(self, path: Path, why: str) -> WeightsUnavailable:
        return WeightsUnavailable(
            f"The weights of {self.spec.ref} are not available: {path} is not a U²-Net "
            f"ONNX model rembg can use ({why.rstrip('.')}).\n"
            f"Replace it with {MODEL_URL} (md5 {MODEL_MD5})."
        )


def without_orientation(image: Image) -> Image:
    """``image`` with its EXIF orientation tag dropped, so rembg's ``exif_transpose`` leaves
    it as stored (the original's rembg did not rotate). Pillow keeps the EXIF it read on
    the image, so ``getexif()`` returns the same mapping to rembg afterwards."""
    exif = image.getexif()
    if _EXIF_ORIENTATION in exif:
        del exif[_EXIF_ORIENTATION]
    return image


@functools.cache
def _session_class() -> Any:
    """rembg's u2net session, finding its file here instead of downloading it."""
    from rembg.sessions.u2net import U2netSession

    class LocatedU2netSession(U2netSession):
        @classmethod
        def download_models(cls, *args: Any, **kwargs: Any) -> str:
            # Called by the session's constructor for the file to load.
            return str(kwargs["model_path"])

    return LocatedU2netSession


def _signature_problem(session: Any) -> str | None:
    """Why the ONNX model cannot be U²-Net as rembg calls it (one image input of 3
    channels at 320x320, a first output of one mask channel), or None."""
    inputs, outputs = session.get_inputs(), session.get_outputs()
    if not inputs or not outputs:
        return "it has no inputs or no outputs"
    shape = inputs[0].shape
    sides_fit = all(_fits(side, INPUT_SIDE) for side in shape[2:])
    if len(shape) != 4 or not _fits(shape[1], 3) or not sides_fit:
        return f"its first input has shape {shape}, not [1, 3, {INPUT_SIDE}, {INPUT_SIDE}]"
    if len(outputs[0].shape) != 4:
        return f"its first output has shape {outputs[0].shape}, not [1, 1, H, W]"
    return None


def _fits(dimension: Any, size: int) -> bool:
    # A dimension is a number, or a name/None where the model leaves it free.
    return not isinstance(dimension, int) or dimension == size


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line[:300]
