"""A worse candidate on purpose: a dataset version with its train and val labels moved to other frames (the test
split's kept), so a candidate fitted on it learns nothing true of the site. The gate must stop it; forced past the
gate, the rollout's live checks must."""
from __future__ import annotations

from collections import defaultdict
from dataclasses import replace
from typing import Sequence

import numpy as np

from services.datasets.manifest import Item
from services.datasets.store import DatasetStore


def shuffled_labels(items: Sequence[Item], seed: int = 0) -> list[Item]:
    """The items with the train and val splits' answers (verdict and boxes together) moved to other frames of the
    same camera and image size, so every answer still fits its new frame; the test split's are kept."""
    groups: dict[tuple, list[Item]] = defaultdict(list)
    for item in items:
        if item.split in ("train", "val"):
            groups[(item.camera_id, item.width, item.height)].append(item)
    rng = np.random.default_rng(seed)
    moved: dict[str, Item] = {}
    for group in groups.values():
        for item, j in zip(group, rng.permutation(len(group))):
            moved[item.item_id] = replace(item, labels=group[j].labels, verdict=group[j].verdict)
    return [moved.get(item.item_id, item) for item in items]


def commit_shuffled_labels(store: DatasetStore, dataset: str, version: str, branch: str = "shuffled",
                           author: str = "demo", seed: int = 0) -> str:
    """`dataset@version` with its train and val labels shuffled (shuffled_labels), committed on `branch`;
    returns the new version's id."""
    manifest = store.version(dataset, version)
    return store.commit(dataset, shuffled_labels(manifest.items, seed),
                        message=f"{manifest.version[:12]} with its train and val labels shuffled", author=author,
                        branch=branch).version
