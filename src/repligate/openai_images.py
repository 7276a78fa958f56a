"""OpenAI's images API mapped onto the models: which model a request names, the model
input a generation or an edit becomes, and the answer a finished prediction gives.

No HTTP here (api/openai_images.py is the routes); the prediction itself is created and
waited for by the PredictionService like any other.

- ``size`` "WxH" becomes the model's ``width``/``height``; a model that takes an
  ``aspect_ratio`` instead (Flux) gets the listed ratio nearest to W/H.
- ``n`` becomes ``num_outputs``.
- Every other body field goes to the model as an input of that name (the official
  client's ``extra_body``); OpenAI's own options that no model here has (``quality``,
  ``style``, ``user``, ...) are dropped unless the model has an input of that name.
"""

from __future__ import annotations

import base64
import io
import math
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image, UnidentifiedImageError

from repligate.errors import InvalidRequest, ModelNotFound, NotFound
from repligate.models.spec import ModelSpec
from repligate.records import Prediction
from repligate.registry import Registry
from repligate.storage.base import SCHEME, Storage, map_leaves, resolve_output
from repligate.usage import UsageRecorder

RESPONSE_FORMATS = ("url", "b64_json")
# OpenAI's options with no counterpart in these models: dropped, unless the model has an
# input of the same name (then it is the model's).
OPENAI_ONLY_OPTIONS = (
    "quality",
    "style",
    "user",
    "background",
    "moderation",
    "output_compression",
    "partial_images",
    "stream",
    "input_fidelity",
)
_SIZE = re.compile(r"^\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*$")


class ImageRequestError(InvalidRequest):
    """A request this API cannot turn into a prediction; ``param`` names the field at
    fault and ``code`` says what is wrong, as OpenAI's errors do."""

    def __init__(self, detail: str, *, param: str | None = None, code: str | None = None):
        super().__init__(detail)
        self.param = param
        self.code = code


class UnknownImageModel(ModelNotFound):
    def __init__(self, name: str) -> None:
        super().__init__(f"The model {name!r} does not exist.")


# -- which model ---------------------------------------------------------------------------


def resolve_model(
    registry: Registry, requested: str | None, aliases: Mapping[str, str], default: str
) -> ModelSpec:
    """``owner/name``, ``owner/name:version`` or an operator's alias; ``default`` when
    the request names none."""
    name = (requested or "").strip() or default
    target = aliases.get(name, name)
    try:
        if ":" in target:
            return registry.resolve(target)
        owner, _, model = target.partition("/")
        if not owner or not model:
            raise UnknownImageModel(name)
        return registry.model(owner, model)
    except NotFound as exc:
        raise UnknownImageModel(name) from exc


def _properties(spec: ModelSpec) -> dict[str, Any]:
    properties: dict[str, Any] = spec.schemas["Input"]["properties"]
    return properties


def _makes_images(spec: ModelSpec) -> bool:
    output = spec.schemas.get("Output", {})
    return output.get("type") == "array" and output.get("items", {}).get("format") == "uri"


def is_text_to_image(spec: ModelSpec) -> bool:
    """A prompt in, a list of images out, and nothing else required; sized by
    width/height or by aspect ratio."""
    properties = _properties(spec)
    sized = {"width", "height"} <= properties.keys() or "aspect_ratio" in properties
    required = set(spec.schemas["Input"].get("required", []))
    return _makes_images(spec) and "prompt" in properties and sized and required <= {"prompt"}


def is_inpainting(spec: ModelSpec) -> bool:
    properties = _properties(spec)
    return _makes_images(spec) and {"prompt", "image", "mask"} <= properties.keys()


def _choices(spec: ModelSpec, name: str) -> list[Any] | None:
    """The enum of an input, followed through its ``allOf`` reference if it has one."""
    prop = _properties(spec).get(name, {})
    if "enum" in prop:
        return list(prop["enum"])
    for part in prop.get("allOf", []):
        ref = part.get("$ref", "")
        target = spec.schemas.get(ref.rsplit("/", 1)[-1], {})
        if "enum" in target:
            return list(target["enum"])
    return None


# -- the model's input ---------------------------------------------------------------------


def parse_size(size: Any) -> tuple[int, int] | None:
    if size is None or size == "auto":
        return None
    match = _SIZE.match(size) if isinstance(size, str) else None
    if match is None or int(match.group(1)) == 0 or int(match.group(2)) == 0:
        raise ImageRequestError(
            f"Invalid size {size!r}: give it as WIDTHxHEIGHT in pixels, e.g. '512x512'.",
            param="size",
            code="invalid_size",
        )
    return int(match.group(1)), int(match.group(2))


def nearest_aspect_ratio(width: int, height: int, choices: list[str]) -> str:
    """The listed "W:H" ratio closest to width/height (compared on a log scale, so 2:1
    and 1:2 are as far from 1:1)."""
    wanted = math.log(width / height)

    def distance(choice: str) -> float:
        w, _, h = choice.partition(":")
        return abs(math.log(float(w) / float(h)) - wanted)

    usable = [c for c in choices if re.fullmatch(r"\d+(\.\d+)?:\d+(\.\d+)?", c)]
    return min(usable, key=distance)


def _apply_size(spec: ModelSpec, inputs: dict[str, Any], size: tuple[int, int]) -> None:
    properties = _properties(spec)
    width, height = size
    if {"width", "height"} <= properties.keys():
        inputs["width"], inputs["height"] = width, height
    elif "aspect_ratio" in properties:
        ratios = [str(c) for c in _choices(spec, "aspect_ratio") or []]
        if ratios:
            inputs["aspect_ratio"] = nearest_aspect_ratio(width, height, ratios)
    else:
        raise ImageRequestError(
            f"{spec.ref} takes no image size; leave size out.", param="size", code="invalid_size"
        )


def _count(spec: ModelSpec, n: Any) -> int | None:
    if n is None:
        return None
    if isinstance(n, str) and n.strip().isdigit():  # a multipart field
        n = int(n)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ImageRequestError(
            f"Invalid n {n!r}: it must be a whole number, 1 or more.", param="n"
        )
    if "num_outputs" not in _properties(spec) and n != 1:
        raise ImageRequestError(f"{spec.ref} makes one image per request.", param="n")
    return n


def _coerce(prop: Mapping[str, Any], value: Any) -> Any:
    """A multipart field is text; make it the type the model's input has."""
    if not isinstance(value, str):
        return value
    kind = prop.get("type")
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            return float(value)
    except ValueError:
        return value
    if kind == "boolean" and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _model_input(
    spec: ModelSpec, prompt: Any, n: Any, size: Any, extra: Mapping[str, Any], *, text: bool
) -> dict[str, Any]:
    if not isinstance(prompt, str) or not prompt.strip():
        raise ImageRequestError("prompt is required.", param="prompt", code="missing_required")
    properties = _properties(spec)
    if extra.get("stream") not in (None, False, "false") and "stream" not in properties:
        # The client would wait for server-sent events; say so rather than answer JSON.
        raise ImageRequestError(
            "stream is not supported here; the prediction's urls.stream streams its events.",
            param="stream",
        )
    inputs: dict[str, Any] = {}
    for name, value in extra.items():
        if name in OPENAI_ONLY_OPTIONS and name not in properties:
            continue
        inputs[name] = _coerce(properties.get(name, {}), value) if text else value
    inputs["prompt"] = prompt
    parsed = parse_size(size)
    if parsed is not None:
        _apply_size(spec, inputs, parsed)
    count = _count(spec, n)
    if count is not None and "num_outputs" in properties:
        inputs["num_outputs"] = count
    return inputs


def generation_input(
    spec: ModelSpec, prompt: Any, n: Any, size: Any, extra: Mapping[str, Any]
) -> dict[str, Any]:
    """The model input of ``images.generate``."""
    if not is_text_to_image(spec):
        raise ImageRequestError(
            f"{spec.ref} is not a text-to-image model; images.generate needs one.",
            param="model",
            code="invalid_model",
        )
    return _model_input(spec, prompt, n, size, extra, text=False)


def _open(data: bytes, param: str) -> Image.Image:
    try:
        picture = Image.open(io.BytesIO(data))
        picture.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise ImageRequestError(
            f"The {param} is not an image this server can read (send a PNG).",
            param=param,
            code="invalid_image",
        ) from exc
    return picture


def _png_data_uri(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def replicate_mask(image: Image.Image, mask: Image.Image | None) -> Image.Image:
    """OpenAI's mask marks the area to repaint with transparency (alpha 0); Replicate's
    inpainting models take a black-and-white mask where white is repainted. So: alpha 0
    becomes white, everything else black. Without a mask, OpenAI uses the image's own
    transparent area, and so do we."""
    source = mask if mask is not None else image
    param = "mask" if mask is not None else "image"
    if mask is not None and mask.size != image.size:
        raise ImageRequestError(
            f"The mask is {mask.size[0]}x{mask.size[1]} but the image is "
            f"{image.size[0]}x{image.size[1]}; they must be the same size.",
            param="mask",
            code="invalid_image",
        )
    has_alpha = source.mode in ("RGBA", "LA", "PA") or (
        source.mode == "P" and "transparency" in source.info
    )
    if not has_alpha:
        raise ImageRequestError(
            f"The {param} has no transparency, so nothing marks the area to edit: send a "
            "PNG whose transparent pixels (alpha 0) mark it.",
            param=param,
            code="invalid_image",
        )
    alpha = source.convert("RGBA").getchannel("A")
    return alpha.point(lambda value: 255 if value == 0 else 0).convert("L")


def edit_input(
    spec: ModelSpec,
    image: bytes,
    mask: bytes | None,
    prompt: Any,
    n: Any,
    size: Any,
    extra: Mapping[str, Any],
) -> dict[str, Any]:
    """The model input of ``images.edit``: the image (opaque), the mask in Replicate's
    convention, and the size of the image itself when no size is asked for and the
    model takes it."""
    if not is_inpainting(spec):
        raise ImageRequestError(
            f"{spec.ref} is not an inpainting model; images.edit needs one.",
            param="model",
            code="invalid_model",
        )
    picture = _open(image, "image")
    white_is_edit = replicate_mask(picture, _open(mask, "mask") if mask is not None else None)
    inputs = _model_input(spec, prompt, n, size, extra, text=True)
    inputs["image"] = _png_data_uri(picture.convert("RGB"))
    inputs["mask"] = _png_data_uri(white_is_edit)
    if size is None and _accepts_size(spec, *picture.size):
        inputs.setdefault("width", picture.size[0])
        inputs.setdefault("height", picture.size[1])
    return inputs


def _accepts_size(spec: ModelSpec, width: int, height: int) -> bool:
    properties = _properties(spec)
    if not {"width", "height"} <= properties.keys():
        return False
    for name, value in (("width", width), ("height", height)):
        prop, choices = properties[name], _choices(spec, name)
        if choices is not None and value not in choices:
            return False
        if not prop.get("minimum", value) <= value <= prop.get("maximum", value):
            return False
    return True


def input_param(field: str) -> str:
    """The OpenAI parameter a model input came from (for an error's ``param``)."""
    name = field.removeprefix("input.").split(".", 1)[0]
    return {"width": "size", "height": "size", "aspect_ratio": "size", "num_outputs": "n"}.get(
        name, name
    )


# -- the answer ----------------------------------------------------------------------------


def images_response(
    prediction: Prediction,
    response_format: str,
    *,
    storage: Storage,
    base_url: str,
    usage: UsageRecorder | None,
) -> dict[str, Any]:
    """OpenAI's ``{created, data, usage}`` for a prediction that succeeded."""
    outputs: list[Any] = []
    map_leaves(prediction.output, outputs.append)
    if response_format == "b64_json":
        data = [{"b64_json": _read_b64(value, storage)} for value in outputs]
    else:
        data = [{"url": resolve_output(value, storage, base_url)} for value in outputs]
    body: dict[str, Any] = {"created": int(prediction.created_at.timestamp()), "data": data}
    if usage is not None:
        measured = usage.measure(prediction)
        # Billed by images and pixel-steps, not by tokens: OpenAI's token fields are there
        # (and zero) so clients and gateways that read them find them.
        body["usage"] = {
            "input_tokens": 0,
            "output_tokens": 0,
            "total_tokens": 0,
            "input_tokens_details": {"text_tokens": 0, "image_tokens": 0},
            "image_count": measured.image_count,
            "pixels": measured.pixels,
            "pixel_steps": measured.pixel_steps,
            "predict_time": measured.predict_time,
        }
    return body


def _read_b64(value: Any, storage: Storage) -> str:
    if not (isinstance(value, str) and value.startswith(SCHEME)):
        raise ImageRequestError(
            "This output is not stored on this server; ask for response_format 'url'.",
            param="response_format",
        )
    with storage.open(value[len(SCHEME) :]) as stream:
        return base64.b64encode(stream.read()).decode()
