"""sujaykhandekar/object-removal: DeepLabV3 segmentation and EdgeConnect inpainting
(runners/object_removal.py)."""

from typing import Any

from repligate.errors import InvalidField
from repligate.models.spec import ModelSpec, Requirements
from repligate.runners.object_removal import (
    ObjectRemovalRunner,
    unknown_classes,
    unknown_classes_message,
)

# Plain torch (the networks are rebuilt in runners/deeplab.py and runners/edgeconnect.py)
# and scikit-image for the original's Canny edges and grayscale.
TORCH_AND_SKIMAGE = Requirements(
    ("torch", "skimage"),
    "install repligate with its `local` extra (pip install 'repligate[local]', or make install)",
)


def check_input(values: dict[str, Any]) -> list[InvalidField]:
    # The original fails the prediction with a KeyError; refusing at create is better.
    unknown = unknown_classes(values["objects_to_remove"])
    if unknown:
        return [InvalidField("enum", "input.objects_to_remove", unknown_classes_message(unknown))]
    return []


MODEL = ModelSpec(
    owner="sujaykhandekar",
    name="object-removal",
    version="153b0087c2576ad30d8cbddb35275b387d1a6bf986bda5499948f843f6460faf",
    version_created_at="2022-05-25T00:00:00Z",
    description="Remove objects from images by name",
    requires=TORCH_AND_SKIMAGE,
    # Three weights files in $REPLIGATE_WEIGHTS_DIR/sujaykhandekar__object-removal/ (README).
    default_weights=None,
    runner=ObjectRemovalRunner,
    check_input=check_input,
)
