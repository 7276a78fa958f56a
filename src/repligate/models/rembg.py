"""cjwbw/rembg: background removal with U²-Net (rembg on onnxruntime; no torch)."""

from typing import Any

from repligate.errors import InvalidField
from repligate.models.spec import REMBG, ModelSpec
from repligate.runners.background_removal import U2NetBackgroundRemovalRunner


def check_input(values: dict[str, Any]) -> list[InvalidField]:
    # The schema's default for `image` is "", so it does not mark it required; the
    # original then fails at run time. Refusing at create says the same sooner, in the
    # shape of the schema's own "required" problems.
    if not values.get("image"):
        return [InvalidField("required", "input", "image is required")]
    return []


MODEL = ModelSpec(
    owner="cjwbw",
    name="rembg",
    version="fb8af171cfa1616ddcf1242c093f9c46bcada5ad4cf6f2fbe8b81b330ec5c003",
    version_created_at="2022-12-02T00:00:00Z",
    description="Remove images background",
    requires=REMBG,
    default_weights="u2net",
    runner=U2NetBackgroundRemovalRunner,
    check_input=check_input,
)
