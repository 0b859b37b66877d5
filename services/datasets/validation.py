"""The validation gate a version passes before it is written: every problem is named (item by item, boxes numbered
from 1), so a refused commit can be fixed in one go.

Checked: item ids unique and non-empty; width and height positive; the verdict and split known; a "labelled" item
has boxes and a "nothing_to_label" item none; each box finite, not degenerate and inside the image (half a pixel
of rounding allowed at the edges, as the annotation schema allows); each class in the label schema of the
version; one schema version for the whole version (an item labelled under another is refused); every blob
stored, with the size the item says."""
from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Collection, Iterable, Protocol

from services.datasets.manifest import SPLITS, VERDICTS, Item

# As services/annotation/schemas.py: a box drawn to the edge may land a fraction of a pixel outside after scaling.
EDGE_TOLERANCE_PX = 0.5


class CommitRefused(ValueError):
    """The validation gate refused a commit; `problems` names every one."""

    def __init__(self, problems: list[str], shown: int = 20):
        self.problems = list(problems)
        listed = "; ".join(self.problems[:shown])
        more = f"; and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        super().__init__(f"commit refused, {len(self.problems)} problem(s): {listed}{more}")


class SchemaProvider(Protocol):
    """What gives the classes of a schema version: services.annotation.schemas.SchemaStore (its `get` raises
    KeyError, UnknownSchemaVersion, for a version never published)."""

    def get(self, version: str): ...


# A provider of schema versions, one LabelSchema, a collection of class names, or None (classes not checked).
Schema = SchemaProvider | Collection[str] | None
# sha256 -> the stored blob's size, None when no such blob is stored.
BlobSize = Callable[[str], "int | None"]


def schema_classes(schema: Schema, version: str) -> tuple[set[str] | None, str | None]:
    """The classes of `version` (None: not checked), and the problem when they cannot be had."""
    if schema is None:
        return None, None
    if hasattr(schema, "classes"):  # one LabelSchema
        if version and getattr(schema, "version", version) != version:
            return None, f"the schema given is version {schema.version}, the version's is {version}"
        return set(schema.classes), None
    if hasattr(schema, "get") and not isinstance(schema, (set, frozenset, list, tuple, dict)):
        if not version:
            return None, "no schema version: the classes cannot be checked against a schema"
        try:
            found = schema.get(version)
        except KeyError:
            return None, f"schema version {version!r} is not published"
        return set(found.classes), None
    return set(schema), None


def box_problems(item: Item, classes: set[str] | None, schema_version: str) -> list[str]:
    problems = []
    t = EDGE_TOLERANCE_PX
    for number, label in enumerate(item.labels, start=1):
        where = f"item {item.item_id}: box {number}"
        if not label.label:
            problems.append(f"{where} has no class")
        elif classes is not None and label.label not in classes:
            problems.append(f"{where}: class {label.label!r} is not in schema {schema_version or '(given)'}")
        if len(label.box) != 4 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in label.box):
            problems.append(f"{where} has no valid coordinates ({label.box!r})")
            continue
        x1, y1, x2, y2 = label.box
        if x2 <= x1 or y2 <= y1:
            problems.append(f"{where} is degenerate ({x1:g},{y1:g})-({x2:g},{y2:g}): x2 must exceed x1 and y2 y1")
        elif x1 < -t or y1 < -t or x2 > item.width + t or y2 > item.height + t:
            problems.append(f"{where} ({x1:g},{y1:g})-({x2:g},{y2:g}) is not inside the "
                            f"{item.width}x{item.height} image")
    return problems


def item_problems(item: Item, classes: set[str] | None, schema_version: str) -> list[str]:
    where = f"item {item.item_id}"
    problems = []
    if not (isinstance(item.width, int) and isinstance(item.height, int) and item.width > 0 and item.height > 0):
        problems.append(f"{where}: width and height must be positive, not {item.width}x{item.height}")
    if item.verdict not in VERDICTS:
        problems.append(f"{where}: verdict {item.verdict!r} is not one of {', '.join(VERDICTS)}")
    elif item.verdict == "labelled" and not item.labels:
        problems.append(f"{where}: verdict 'labelled' needs at least one box")
    elif item.verdict == "nothing_to_label" and item.labels:
        problems.append(f"{where}: verdict 'nothing_to_label' takes no boxes, has {len(item.labels)}")
    if item.split not in SPLITS:
        problems.append(f"{where}: split {item.split!r} is not one of {', '.join(SPLITS)}")
    if item.schema_version and schema_version and item.schema_version != schema_version:
        problems.append(f"{where} is labelled under schema {item.schema_version}, the version under "
                        f"{schema_version}: one schema version per version")
    if not is_sha256(item.blob):
        problems.append(f"{where}: blob {item.blob!r} is not a sha256 (64 lowercase hex)")
    if item.width > 0 and item.height > 0:
        problems.extend(box_problems(item, classes, schema_version))
    return problems


def is_sha256(text) -> bool:
    return isinstance(text, str) and len(text) == 64 and all(c in "0123456789abcdef" for c in text)


def version_schema(items: Iterable[Item], schema_version: str) -> tuple[str, list[str]]:
    """The schema version of a version: the one given, else the one its items share; a problem when the items
    carry several and none was given."""
    if schema_version:
        return schema_version, []
    carried = sorted({item.schema_version for item in items if item.schema_version})
    if len(carried) > 1:
        return "", [f"items are labelled under {len(carried)} schema versions ({', '.join(carried)}): "
                    "one schema version per version"]
    return (carried[0] if carried else ""), []


def validation_problems(items: list[Item], schema_version: str = "", schema: Schema = None,
                        blob_size: BlobSize | None = None) -> list[str]:
    """Every problem that keeps `items` from being a version under `schema_version` (empty: none).

    `schema` gives the classes: a provider with `.get(version)` (a SchemaStore), a collection of class names, or
    None to leave classes unchecked. `blob_size` says whether (and at what size) each blob is stored; None leaves
    blobs unchecked."""
    problems = []
    schema_version, mixed = version_schema(items, schema_version)
    problems.extend(mixed)
    classes, schema_problem = schema_classes(schema, schema_version)
    if schema_problem:
        problems.append(schema_problem)
    ids = Counter(item.item_id for item in items)
    problems.extend(f"item id {item_id!r} appears {n} times" for item_id, n in sorted(ids.items()) if n > 1)
    if "" in ids:
        problems.append("an item has an empty item id")
    for item in items:
        problems.extend(item_problems(item, classes, schema_version))
    if blob_size is not None:
        for item in items:
            if not is_sha256(item.blob):
                continue  # named above
            stored = blob_size(item.blob)
            if stored is None:
                problems.append(f"item {item.item_id}: blob {item.blob} is not stored")
            elif stored != item.size:
                problems.append(f"item {item.item_id}: blob {item.blob} is {stored} bytes, the item says "
                                f"{item.size}")
    return problems
