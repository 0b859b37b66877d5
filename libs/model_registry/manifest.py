"""Manifests of registry versions, free of any store: every file of a converted model dir with its sha256 and
size, and what its model.json says (source, labels, input, precision, calibration, metrics, lineage, the frame
embedding's feature and projection file)."""
from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = 1
REQUIRED_FILES = ("model.xml", "model.bin", "model.json")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
CHUNK = 1024 * 1024


class RegistryError(RuntimeError):
    """A registry operation that cannot be done; the message says why."""


class UnknownModel(RegistryError):
    pass


class UnknownVersion(RegistryError):
    pass


class VersionExists(RegistryError):
    pass


class UnsafeManifest(RegistryError):
    """A manifest names a file outside its version's dir (a path with '..', a directory part, or absolute)."""


class CorruptArtifact(RegistryError):
    """A downloaded file is not the file the manifest names (sha256 or size differ)."""


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise RegistryError(f"{name!r} is not a model name: letters, digits, '.', '_', '-', at most 128")
    return name


def checked_file_paths(manifest: dict) -> dict:
    """The manifest, once every file it names is a plain file name: a version is a flat dir (build_manifest
    writes names only), and a path like `../x` or `/etc/x` would make a download write outside its dir."""
    for entry in manifest.get("files", []):
        path = entry.get("path")
        pure = PurePosixPath(path) if isinstance(path, str) else None
        if (pure is None or pure.is_absolute() or len(pure.parts) != 1 or pure.name in ("", ".", "..")
                or "\\" in path):
            raise UnsafeManifest(f"the manifest of {manifest.get('name')!r} version {manifest.get('version')} "
                                 f"names the file {path!r}: only plain file names inside the version's dir "
                                 f"are allowed")
    return manifest


def next_version(used: set[int] | list[int]) -> int:
    """Versions are 1, 2, 3...; a number seen in the store (even an unfinished import) is never reused."""
    return max(used, default=0) + 1


def file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def build_manifest(name: str, version: int, model_dir: Path, imported_by: str, imported_at: datetime,
                   parent_version: int | None = None) -> dict:
    """The manifest of `model_dir` as version `version` of `name`: every file with sha256 and size, and what
    model.json says about the model (source, labels, input, precision, calibration, metrics, lineage)."""
    model_dir = Path(model_dir)
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise RegistryError(f"{model_dir} is not a converted model: {', '.join(missing)} missing")
    try:
        metadata = json.loads((model_dir / "model.json").read_text())
    except ValueError as exc:
        raise RegistryError(f"{model_dir}/model.json is not JSON: {exc}") from exc
    files = []
    for path in sorted(p for p in model_dir.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.name != MANIFEST):
        sha256, size = file_digest(path)
        files.append({"path": path.name, "sha256": sha256, "size": size})
    labels_file = metadata.get("labels", "labels.txt")
    labels_path = model_dir / labels_file
    labels = [line for line in labels_path.read_text().split("\n") if line] if labels_path.is_file() else []
    return {
        "schema": MANIFEST_SCHEMA,
        "name": name,
        "version": version,
        "files": files,
        "source": metadata.get("source", {}),
        "source_version": str(metadata.get("version", "")),
        "format": metadata.get("format", ""),
        "labels": {"file": labels_file if labels else "", "names": labels},
        "input": metadata.get("input", {}),
        "precision": metadata.get("precision", "fp32"),
        "calibration": metadata.get("calibration"),
        "metrics": metadata.get("metrics"),
        # The feature and projection file the version's embeddings come from (None: the version gives none).
        "embedding": metadata.get("embedding"),
        "lineage": {
            "parent_version": parent_version,
            "derived_from": metadata.get("lineage"),
            "imported_by": imported_by,
            "imported_at": imported_at.astimezone(timezone.utc).isoformat(),
        },
        "model_json": metadata,
    }


def parent_from_lineage(metadata_lineage: dict | None, name: str, manifests: list[dict]) -> int | None:
    """The registry version a derived model comes from: model.json's lineage names its parent as
    `name:source_version` (quantize.py); the latest registered version of `name` built from that is it."""
    parent = (metadata_lineage or {}).get("parent", "")
    parent_name, _, parent_source = parent.rpartition(":")
    if parent_name != name:
        return None
    matches = [m["version"] for m in manifests if m.get("source_version") == parent_source]
    return max(matches, default=None)
