"""cjwbw/rembg: schema and input validation; no runner yet."""

from repligate.models.spec import ONNX, ModelSpec

MODEL = ModelSpec(
    owner="cjwbw",
    name="rembg",
    version="fb8af171cfa1616ddcf1242c093f9c46bcada5ad4cf6f2fbe8b81b330ec5c003",
    version_created_at="2022-12-02T00:00:00Z",
    description="Remove images background",
    requires=ONNX,
    default_weights="u2net",
)
