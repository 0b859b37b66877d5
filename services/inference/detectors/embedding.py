"""A frame's embedding from the serving model, for embedding drift: one feature map of the network (named in
model.json), global-average-pooled inside the compiled graph, then reduced by the fixed random projection stored
in the model dir and L2-normalised.

The projection is a file of the model version (`embedding_projection.npy`, written at build time by
tools/embedding_projection.py), so one version's embeddings compare across restarts and replicas, and a new version
brings its own. A dir without one, or whose model.json names a feature the graph lacks, gives no embedding: a
warning at load, never an error.

model.json:
    "embedding": {"feature": "<friendly name of the op whose output is pooled>", "pooling": "global average",
                  "projection": "embedding_projection.npy", "dimensions": 64, "seed": 0}
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset16 as ops

from libs.common.logs import get_logger

# The pooled feature vector's tensor name among the compiled model's outputs.
POOLED_FEATURE_OUTPUT = "vigil_embedding_pooled"
MAX_DIMENSIONS = 64
# The ops whose output is a feature map: convolutions and the activations that follow them.
FEATURE_OPS = frozenset({"Convolution", "GroupConvolution", "Relu", "Clamp", "PRelu", "Swish", "HSwish", "HSigmoid",
                         "Sigmoid", "Elu", "Gelu", "Mish", "SoftPlus"})


@dataclass(frozen=True)
class EmbeddingProjection:
    feature: str         # friendly name of the op whose (first) output is pooled
    matrix: np.ndarray   # [channels, dimensions] float32

    @property
    def dimensions(self) -> int:
        return int(self.matrix.shape[1])

    def embed(self, pooled: np.ndarray) -> np.ndarray:
        """Pooled features [1, C] (or [C]) -> the unit-norm embedding [dimensions] (float32)."""
        projected = np.asarray(pooled, np.float32).reshape(-1) @ self.matrix
        norm = float(np.linalg.norm(projected))
        return projected / norm if norm > 0 else projected


def read_projection(model_dir: Path, metadata: dict) -> EmbeddingProjection | None:
    """The projection model.json names, or None (with a warning when it names one that cannot be read)."""
    spec = metadata.get("embedding")
    if not spec:
        return None
    log = get_logger(__name__)
    try:
        matrix = np.load(Path(model_dir) / spec["projection"], allow_pickle=False)
        feature = str(spec["feature"])
    except (OSError, KeyError, TypeError, ValueError) as exc:
        log.warning("embedding off: the projection cannot be read", model_dir=str(model_dir), error=str(exc))
        return None
    if matrix.ndim != 2 or not 0 < matrix.shape[1] <= MAX_DIMENSIONS:
        log.warning("embedding off: the projection is not [channels, <=64]", model_dir=str(model_dir),
                    shape=list(matrix.shape))
        return None
    return EmbeddingProjection(feature, matrix.astype(np.float32))


def pooled_feature_output(model: ov.Model, projection: EmbeddingProjection) -> bool:
    """Adds the global average of the projection's feature map as an output of `model`; False (model untouched)
    when the graph has no such op or its output does not fit the projection."""
    op = next((op for op in model.get_ops() if op.get_friendly_name() == projection.feature), None)
    shape = op.get_output_partial_shape(0) if op is not None else None
    if shape is None or shape.rank.is_dynamic or shape.rank.get_length() != 4 or shape[1].is_dynamic \
            or shape[1].get_length() != projection.matrix.shape[0]:
        get_logger(__name__).warning("embedding off: the model has no feature map that fits the projection",
                                     feature=projection.feature, model=model.get_friendly_name())
        return False
    pooled = ops.reduce_mean(op.output(0), np.array([2, 3], np.int64), keep_dims=False)
    pooled.output(0).get_tensor().set_names({POOLED_FEATURE_OUTPUT})
    model.add_results([ops.result(pooled)])
    return True


def feature_by_rule(model: ov.Model) -> str:
    """The feature map an embedding is taken from, by one rule for any convolutional network: of the
    convolutions and activations whose output is computed from the input's values (not from folded weights or
    the input's shape alone) and is a static [1, C, H, W] map, the widest (most channels: the end of the
    backbone in YOLO and MobileNet alike), of those the coarsest grid (fewest H*W), of those the last in
    topological order (the activation after its convolution). For yolov3-tiny: the 1024-channel 13x13
    activation of cfg layer 12, the last of its backbone."""
    best, best_key = None, None
    on_input: set[int] = set()  # ops computed from the input's values (OpenVINO instance ids)
    for index, op in enumerate(model.get_ordered_ops()):
        kind = op.get_type_name()
        if kind == "Parameter" or (kind not in ("ShapeOf", "Result") and any(
                i.get_source_output().get_node().get_instance_id() in on_input for i in op.inputs())):
            on_input.add(op.get_instance_id())
        if op.get_instance_id() not in on_input or kind not in FEATURE_OPS:
            continue
        shape = op.get_output_partial_shape(0)
        if shape.is_dynamic or shape.rank.get_length() != 4 or shape[0].get_length() != 1:
            continue
        _, channels, height, width = (d.get_length() for d in shape)
        key = (channels, -height * width, index)
        if best_key is None or key > best_key:
            best, best_key = op, key
    if best is None:
        raise ValueError(f"{model.get_friendly_name()}: no op computes a static [1, C, H, W] map from the input")
    return best.get_friendly_name()
