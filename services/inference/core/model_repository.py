"""Where models are loaded from by name: a directory of model dirs, and the same with some names pinned to a
downloaded registry version's dir (what the registry follower swaps in)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Protocol

from services.inference.detectors import Detector


class ModelNotFound(LookupError):
    pass


class ModelRepository(Protocol):
    """Where models are loaded from by name (a directory of model dirs; the registry in the object store)."""

    def available(self) -> dict[str, str]:
        """name -> the version a load would give."""

    def load(self, name: str) -> Detector: ...


class DirectoryRepository:
    """Every subdirectory of `root` holding a model.json is a model, named by its metadata; `also` adds single
    model dirs (the default model's), which a model of the same name under `root` overrides."""

    def __init__(self, root: Path | None, loader: Callable[[Path], Detector], also: tuple[Path, ...] = ()) -> None:
        self.root = root
        self.loader = loader
        self.also = also

    def _dirs(self) -> dict[str, tuple[str, Path]]:
        candidates = [d / "model.json" for d in self.also]
        if self.root is not None and self.root.is_dir():
            candidates += sorted(self.root.glob("*/model.json"))
        found: dict[str, tuple[str, Path]] = {}
        for meta in candidates:
            try:
                metadata = json.loads(meta.read_text())
                found[metadata["name"]] = (str(metadata["version"]), meta.parent)
            except (OSError, ValueError, KeyError):
                continue  # a half-written or foreign dir is not a model
        return found

    def available(self) -> dict[str, str]:
        return {name: version for name, (version, _) in self._dirs().items()}

    def load(self, name: str) -> Detector:
        entry = self._dirs().get(name)
        if entry is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return self.loader(entry[1])


class PinnedRepository:
    """A model repository where a model name can be pinned to a downloaded registry version's dir: loads of that
    name come from the pin, every other name from the wrapped repository."""

    def __init__(self, base: ModelRepository | None, loader: Callable[[Path], Detector]) -> None:
        self.base = base
        self.loader = loader
        self.pins: dict[str, tuple[str, Path]] = {}  # name -> (model.json version, dir)

    def available(self) -> dict[str, str]:
        return {**(self.base.available() if self.base else {}),
                **{name: version for name, (version, _) in self.pins.items()}}

    def load(self, name: str) -> Detector:
        pin = self.pins.get(name)
        if pin is not None:
            return self.loader(pin[1])
        if self.base is None:
            raise ModelNotFound(f"model '{name}' is not in the repository")
        return self.base.load(name)
