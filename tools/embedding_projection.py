"""Gives a model dir its embedding projection (see services/inference/detectors/embedding.py): picks the feature
map by the stated rule, writes a Gaussian random projection of it to `embedding_projection.npy` and names both in
model.json. The projection comes from a fixed seed through numpy's frozen legacy generator, so every machine that
builds the same model gets the same file, and replicas building their own cache give comparable embeddings.

    python -m tools.embedding_projection DIR [--dimensions 64]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import openvino as ov

from services.inference.detectors.embedding import MAX_DIMENSIONS, feature_by_rule

PROJECTION_FILE = "embedding_projection.npy"
SEED = 0


def gaussian_projection(channels: int, dimensions: int = MAX_DIMENSIONS, seed: int = SEED) -> np.ndarray:
    """[channels, dimensions] with N(0, 1/dimensions) entries: distances between pooled vectors are kept in
    expectation (Johnson-Lindenstrauss). RandomState's stream is frozen across numpy versions."""
    return (np.random.RandomState(seed).standard_normal((channels, dimensions))
            / np.sqrt(dimensions)).astype(np.float32)


def embedding_metadata(model: ov.Model, dimensions: int = MAX_DIMENSIONS, seed: int = SEED
                       ) -> tuple[dict, np.ndarray]:
    """model.json's "embedding" section for `model`, and the projection matrix it names."""
    if not 0 < dimensions <= MAX_DIMENSIONS:
        raise ValueError(f"an embedding has 1..{MAX_DIMENSIONS} dimensions, not {dimensions}")
    feature = feature_by_rule(model)
    op = next(op for op in model.get_ops() if op.get_friendly_name() == feature)
    channels = op.get_output_partial_shape(0)[1].get_length()
    section = {"feature": feature, "channels": channels, "pooling": "global average",
               "projection": PROJECTION_FILE, "dimensions": dimensions, "seed": seed,
               "rule": "widest [1, C, H, W] convolution or activation of the input, coarsest, "
                       "last in topological order"}
    return section, gaussian_projection(channels, dimensions, seed)


def _replace(path: Path, write) -> None:
    """Writes a file whole or not at all (a reader never sees half of it)."""
    fd, staging = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(staging, 0o644)
        os.replace(staging, path)
    except BaseException:
        Path(staging).unlink(missing_ok=True)
        raise


def has_projection(model_dir: Path) -> bool:
    """Whether model.json names an embedding whose projection file is there."""
    spec = json.loads((Path(model_dir) / "model.json").read_text()).get("embedding")
    return bool(spec) and (Path(model_dir) / spec.get("projection", PROJECTION_FILE)).is_file()


def add_projection(model_dir: Path, dimensions: int = MAX_DIMENSIONS, seed: int = SEED) -> dict:
    """Writes the projection file, then names it in model.json (in that order, so a model.json never names a
    missing file); returns the section. Safe to run twice or from two processes at once: both write the same."""
    model_dir = Path(model_dir)
    section, matrix = embedding_metadata(ov.Core().read_model(model_dir / "model.xml"), dimensions, seed)
    _replace(model_dir / PROJECTION_FILE, lambda f: np.save(f, matrix, allow_pickle=False))
    metadata = json.loads((model_dir / "model.json").read_text())
    metadata["embedding"] = section
    _replace(model_dir / "model.json", lambda f: f.write((json.dumps(metadata, indent=2) + "\n").encode()))
    return section


def ensure_projection(model_dir: Path) -> Path:
    """`model_dir`, given its projection first if it has none (a dir built before embeddings existed): how the
    install step upgrades a cache in place."""
    if not has_projection(model_dir):
        add_projection(model_dir)
    return Path(model_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--dimensions", type=int, default=MAX_DIMENSIONS)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    print(json.dumps(add_projection(args.model_dir, args.dimensions, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
