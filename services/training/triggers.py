"""Which announced dataset versions start a training job: a commit of a triggering dataset with enough labelled
items, not yet trained for the base model with the service's seed (the registry's manifests say what each version
was trained on: a replayed announcement finds its candidate there and is not trained twice). Pure but for
`trained_version`, which reads the registry."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable

from protos import events_pb2


@dataclass(frozen=True)
class TriggerPolicy:
    datasets: frozenset[str] = frozenset()  # empty: every dataset
    min_items: int = 40
    # A version committed longer ago is history (a first start reads vigil.datasets from its beginning), not a
    # trigger; None: any age.
    max_age_s: float | None = None

    def skip_reason(self, event: events_pb2.DatasetVersion, now_s: float | None = None) -> str | None:
        """Why this announcement starts no job, or None when it does."""
        if event.action != "commit":
            return f"action {event.action or '(none)'}, not a commit"
        if not event.dataset or not event.version:
            return "no dataset or version"
        if self.datasets and event.dataset not in self.datasets:
            return f"dataset {event.dataset} does not trigger training"
        items = labelled_items(event)
        if items < self.min_items:
            return f"{items} labelled items, fewer than {self.min_items}"
        committed_ns = event.envelope.event_time.ToNanoseconds()
        age_s = (time.time() if now_s is None else now_s) - committed_ns / 1e9
        if self.max_age_s is not None and committed_ns and age_s > self.max_age_s:
            return f"committed {age_s / 3600:.1f} h ago, longer than {self.max_age_s / 3600:.1f} h"
        return None


def labelled_items(event: events_pb2.DatasetVersion) -> int:
    """The version's items (every item of a version is labelled, or marked as showing nothing to label)."""
    return int(event.statistics.get("items", event.item_count))


def trained_from(manifest: dict) -> dict:
    """What a registry version was trained on: its model.json's lineage (empty for a converted model)."""
    return (manifest.get("model_json") or {}).get("lineage") or manifest.get("lineage", {}).get("derived_from") or {}


def trained_on(manifest: dict, dataset: str, dataset_version: str, seed: int) -> bool:
    lineage = trained_from(manifest)
    return (lineage.get("dataset"), lineage.get("dataset_version"), lineage.get("seed")) == (
        dataset, dataset_version, seed)


def first_trained_on(manifests: Iterable[dict], dataset: str, dataset_version: str, seed: int) -> dict | None:
    return next((m for m in manifests if trained_on(m, dataset, dataset_version, seed)), None)


def trained_version(registry, base_model: str, dataset: str, dataset_version: str, seed: int) -> dict | None:
    """The manifest of the registry version of `base_model` trained on dataset@version with `seed`, if any
    (newest first: the latest answer stands)."""
    manifests = (registry.manifest(base_model, v) for v in reversed(registry.versions(base_model)))
    return first_trained_on(manifests, dataset, dataset_version, seed)
