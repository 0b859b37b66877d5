"""A worse candidate on purpose: a dataset version with its train and val labels moved to other frames (the test
split's kept), so a candidate fitted on it learns nothing true of the site. The gate must stop it; forced past the
gate, the rollout's live checks must."""
from __future__ import annotations

from dataclasses import replace

import numpy as np

from services.datasets.store import DatasetStore


def commit_shuffled_labels(store: DatasetStore, dataset: str, version: str, branch: str = "shuffled",
                           author: str = "demo", seed: int = 0) -> str:
    """`dataset@version` with its train and val labels shuffled among their frames, committed on `branch`;
    returns the new version's id."""
    manifest = store.version(dataset, version)
    fitted = [item for item in manifest.items if item.split in ("train", "val")]
    moved = np.random.default_rng(seed).permutation(len(fitted))
    shuffled = {item.item_id: replace(item, labels=fitted[j].labels) for item, j in zip(fitted, moved)}
    items = [shuffled.get(item.item_id, item) for item in manifest.items]
    return store.commit(dataset, items, message=f"{version[:12]} with its train and val labels shuffled",
                        author=author, branch=branch).version
