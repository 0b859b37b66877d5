"""The exact difference between two versions, item by item (matched by item_id): added, removed, relabelled (other
boxes, classes or verdict), moved to another split, and changed otherwise (another image or metadata under the same
item id). An item can be both relabelled and moved; labels are compared in their canonical order, so boxes listed
in another order are no change."""
from __future__ import annotations

from dataclasses import dataclass, field

from services.datasets.manifest import Item, Manifest

# The fields whose change is neither a relabelling nor a move.
_OTHER_FIELDS = ("blob", "size", "width", "height", "camera_id", "captured_at", "source_task_ids",
                 "schema_version")


@dataclass
class Diff:
    a: str  # version ids
    b: str
    added: list[str] = field(default_factory=list)  # item ids, sorted
    removed: list[str] = field(default_factory=list)
    relabelled: list[str] = field(default_factory=list)
    moved: list[tuple[str, str, str]] = field(default_factory=list)  # (item id, split in a, split in b)
    changed: dict[str, list[str]] = field(default_factory=dict)  # item id -> the other fields that differ
    unchanged: int = 0
    # For relabelled items: (labels and verdict in a, in b), as JSON.
    relabel_details: dict[str, tuple[dict, dict]] = field(default_factory=dict, repr=False)

    @property
    def empty(self) -> bool:
        return not (self.added or self.removed or self.relabelled or self.moved or self.changed)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "added": self.added, "removed": self.removed,
                "relabelled": [{"item_id": item_id, "a": before, "b": after}
                               for item_id, (before, after) in sorted(self.relabel_details.items())],
                "moved": [{"item_id": i, "from": s, "to": t} for i, s, t in self.moved],
                "changed": [{"item_id": i, "fields": f} for i, f in sorted(self.changed.items())],
                "unchanged": self.unchanged}

    def summary(self) -> str:
        return (f"{self.a}..{self.b}: {len(self.added)} added, {len(self.removed)} removed, "
                f"{len(self.relabelled)} relabelled, {len(self.moved)} moved split, {len(self.changed)} changed, "
                f"{self.unchanged} unchanged")


def _labels(item: Item) -> dict:
    return {"verdict": item.verdict, "labels": [label.to_json() for label in item.labels]}


def diff(a: Manifest, b: Manifest) -> Diff:
    """What changed from version `a` to version `b`."""
    left, right = a.items_by_id(), b.items_by_id()
    result = Diff(a=a.version, b=b.version)
    result.added = sorted(right.keys() - left.keys())
    result.removed = sorted(left.keys() - right.keys())
    for item_id in sorted(left.keys() & right.keys()):
        before, after = left[item_id], right[item_id]
        if before == after:
            result.unchanged += 1
            continue
        if before.labels != after.labels or before.verdict != after.verdict:
            result.relabelled.append(item_id)
            result.relabel_details[item_id] = (_labels(before), _labels(after))
        if before.split != after.split:
            result.moved.append((item_id, before.split, after.split))
        other = [name for name in _OTHER_FIELDS if getattr(before, name) != getattr(after, name)]
        if other:
            result.changed[item_id] = other
    return result
