"""sujaykhandekar/object-removal: schema and input validation; no runner yet."""

from repligate.models.spec import ONNX, ModelSpec

MODEL = ModelSpec(
    owner="sujaykhandekar",
    name="object-removal",
    version="153b0087c2576ad30d8cbddb35275b387d1a6bf986bda5499948f843f6460faf",
    version_created_at="2022-05-25T00:00:00Z",
    description="Remove objects from images by name",
    # To be ported to ONNX (its original is torch: DeepLabV3 + EdgeConnect).
    requires=ONNX,
    default_weights=None,
)
