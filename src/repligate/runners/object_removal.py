"""sujaykhandekar/object-removal: DeepLabV3 finds the named objects, EdgeConnect paints
them out.

The steps are the original's (its ``src/segmentor_fcn.py``, ``src/dataset.py`` and
EdgeConnect's test loop with MODEL=3):

1. segment the RGB image resized to a short side of 400 (DeepLabV3-ResNet101, 21 Pascal
   VOC classes) and take the argmax per pixel; the mask is every pixel of a named class;
2. resize the image to the mask's size (LANCZOS) and paint the masked pixels white;
3. resize image and mask to 256x256 (the aspect ratio is not kept), binarise the mask and
   close gaps of one or two pixels along rows, then columns;
4. grayscale, and Canny edges (scikit-image, sigma 2) outside the mask;
5. the edge generator completes the edges, the inpainting generator the image; the result
   is the generated pixels inside the mask and the image's own outside it: a 256x256 PNG.

The original runs EdgeConnect on the CPU and DeepLab on the GPU in float32; here all three
networks run on the server's device, in float32 (they are small, and half precision would
change the mask's argmax and the kept pixels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from repligate.errors import PredictionFailure
from repligate.events import Canceled, Log
from repligate.runners.base import RunContext, RunnerEnv
from repligate.storage import encode

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL.Image import Image

    from repligate.events import OutputFile
    from repligate.models.spec import ModelSpec

SIZE = 256  # EdgeConnect's INPUT_SIZE in the original's config
SEGMENTATION_SHORT_SIDE = 400  # the original's T.Resize on its (CUDA) path
CANNY_SIGMA = 2  # SIGMA in the original's checkpoints/config.yml

# The original's obj2idx: Pascal VOC's classes with its spelling and case.
CLASSES = (
    "Background",
    "Aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "dining table",
    "dog",
    "horse",
    "motorbike",
    "person",
    "potted plant",
    "sheep",
    "sofa",
    "train",
    "tv/monitor",
)
CLASS_INDEX = {name: index for index, name in enumerate(CLASSES)}


def unknown_classes(objects_to_remove: str) -> list[str]:
    """The names in the comma-separated ``objects_to_remove`` that are not classes. As the
    original: split on commas, no stripping, case-sensitive ("person, car" names " car")."""
    return [name for name in objects_to_remove.split(",") if name not in CLASS_INDEX]


def class_indices(objects_to_remove: str) -> list[int]:
    # The original raises a bare KeyError (e.g. "KeyError: 'Person'") from inside the
    # prediction. We improve on it: the input is refused at create (models/object_removal
    # check_input) with every valid name listed, and this is the same message should a
    # runner be called directly.
    unknown = unknown_classes(objects_to_remove)
    if unknown:
        raise PredictionFailure(unknown_classes_message(unknown))
    return [CLASS_INDEX[name] for name in objects_to_remove.split(",")]


def unknown_classes_message(unknown: list[str]) -> str:
    names = ", ".join(repr(name) for name in unknown)
    valid = ", ".join(CLASSES)
    return (
        f"unknown object class {names}: names are comma-separated, without spaces around "
        f"commas, and case-sensitive; valid names are: {valid}"
    )


def weights_files() -> tuple[str, str, str]:
    from repligate.runners import deeplab, edgeconnect

    return (
        deeplab.WEIGHTS_FILE,
        edgeconnect.EDGE_WEIGHTS_FILE,
        edgeconnect.INPAINT_WEIGHTS_FILE,
    )


def load_networks(directory: Path) -> Any:
    """The three networks from their weights files in ``directory``, as one module (so the
    pipeline cache measures them together)."""
    import torch

    from repligate.runners.deeplab import DeepLabV3
    from repligate.runners.edgeconnect import EdgeGenerator, InpaintGenerator

    builders: list[Callable[[Any], Any]] = [
        DeepLabV3.from_state_dict,
        EdgeGenerator.from_state_dict,
        InpaintGenerator.from_state_dict,
    ]
    loaded = []
    for name, build in zip(weights_files(), builders, strict=True):
        try:
            state = torch.load(directory / name, map_location="cpu", weights_only=True)
            loaded.append(build(state))
        except MemoryError:
            raise
        except Exception as exc:
            # Not a checkpoint, or one of another network (keys, shapes): the file's fault.
            # ValueError is what the weights locator reports as a weights problem.
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"{name} is not usable: {first[:300]}") from exc
    segmentation, edge, inpaint = loaded
    networks = torch.nn.ModuleDict({"segmentation": segmentation, "edge": edge, "inpaint": inpaint})
    return networks.eval()


class ObjectRemovalRunner:
    def __init__(self, env: RunnerEnv, spec: ModelSpec) -> None:
        self.env = env
        self.spec = spec

    def _load(self) -> Any:
        directory = self.env.weights.local_dir(self.spec)
        missing = [
            name
            for name in weights_files()
            if directory is None or not (directory / name).is_file()
        ]
        if missing:
            raise self.env.weights.unavailable(
                self.spec,
                None,
                f"missing {', '.join(missing)} (DeepLabV3-ResNet101 from "
                "download.pytorch.org/models/, EdgeConnect's generators from its authors: "
                "see the README)",
            )

        def load(source: str) -> Any:
            return load_networks(Path(source)).to(self.env.device.name)

        return self.env.weights.load(self.spec, load)

    def networks(self) -> Any:
        return self.env.pipelines.get(self.spec.key, self._load)

    def run(self, inputs: dict[str, Any], ctx: RunContext) -> OutputFile:
        import torch

        classes = class_indices(inputs["objects_to_remove"])
        # The original opens the file and converts it to RGB: no EXIF rotation.
        image = inputs["image_path"].image(exif_transpose=False)
        networks = self.networks()
        if self.env.weights.is_random(self.spec):
            ctx.emit(Log("Note: this server runs tiny random weights; outputs are noise."))
        self.env.threads.apply()
        with torch.inference_mode():
            labels = segment(networks["segmentation"], image, self.env.device.name)
            if ctx.canceled():
                raise Canceled()
            picture, mask = masked_square(image, labels, classes)
            result = inpaint(networks["edge"], networks["inpaint"], picture, mask, self.env)
        return encode.png(result, "output.png", self.env.png_compress_level)


def segment(network: Any, image: Image, device: str) -> np.ndarray:
    """The class of every pixel of ``image`` resized to a short side of 400: (H, W)."""
    from repligate.runners.deeplab import preprocess

    batch = preprocess(image, SEGMENTATION_SHORT_SIDE).to(device)
    scores = network(batch)
    labels: np.ndarray = scores[0].argmax(dim=0).cpu().numpy()
    return labels


def masked_square(image: Image, labels: np.ndarray, classes: list[int]) -> tuple[Any, Any]:
    """The 256x256 image with the objects painted white (uint8 RGB) and their mask (uint8,
    0 or 255, gaps closed), as the original prepares them for EdgeConnect."""
    import numpy as np
    from PIL import Image as PILImage

    mask = np.where(np.isin(labels, classes), 255, 0).astype(np.uint8)
    height, width = mask.shape
    lanczos = PILImage.Resampling.LANCZOS
    pixels = np.array(image.resize((width, height), lanczos))
    pixels[mask == 255] = 255
    picture = np.array(PILImage.fromarray(pixels).resize((SIZE, SIZE), lanczos))
    square = np.array(PILImage.fromarray(mask).resize((SIZE, SIZE), lanczos))
    square[square > 0] = 255
    return picture, close_gaps(close_gaps(square, axis=1), axis=0)


def close_gaps(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill runs of one or two 0s between 255s along ``axis`` (the original's fill_gaps,
    applied to every row or column; matches are found before anything is filled)."""
    import numpy as np

    lines = np.moveaxis(mask, axis, -1).copy()
    on, off = lines == 255, lines == 0
    one = on[..., :-2] & off[..., 1:-1] & on[..., 2:]
    two = on[..., :-3] & off[..., 1:-2] & off[..., 2:-1] & on[..., 3:]
    lines[..., 1:-1][one] = 255
    lines[..., 1:-2][two] = 255
    lines[..., 2:-1][two] = 255
    return np.moveaxis(lines, -1, axis)


def edges_outside(gray: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Canny edges (scikit-image, as the original) where the mask is 0."""
    from skimage.feature import canny

    found: np.ndarray = canny(gray, sigma=CANNY_SIGMA, mask=mask == 0)
    return found


def inpaint(edge_net: Any, inpaint_net: Any, picture: Any, mask: Any, env: RunnerEnv) -> Image:
    """EdgeConnect's edge-then-inpaint pass and the composite: generated pixels inside
    the mask, ``picture``'s own outside."""
    import numpy as np
    import torch
    from PIL import Image as PILImage
    from skimage.color import rgb2gray

    gray = rgb2gray(picture)
    edges = edges_outside(gray, mask)
    device = env.device.name

    def plane(values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.float32))[None, None].to(device)

    images = torch.from_numpy(picture).permute(2, 0, 1)[None].float().div(255).to(device)
    grays, edge_map, masks = plane(gray), plane(edges), plane(mask / 255)
    keep = 1 - masks
    found = edge_net(torch.cat((grays * keep + masks, edge_map * keep, masks), dim=1))
    generated = inpaint_net(torch.cat((images * keep + masks, found), dim=1))
    merged = generated * masks + images * keep
    # [0, 1] -> [0, 255], truncated as the original does (x / 255 * 255 is exact in float32,
    # so the kept pixels come back unchanged).
    out = (merged[0] * 255.0).permute(1, 2, 0).to(torch.int32).cpu().numpy().astype(np.uint8)
    return PILImage.fromarray(out)
