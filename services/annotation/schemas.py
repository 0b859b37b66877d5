"""Label schemas: what an annotator may answer for a frame. Versioned and immutable once published: the classes (the
model's labels by default, plus classes of the site), the rules shown to people, and the rules enforced on every
submission (`LabelSchema.violations` names each broken one). `SchemaStore` keeps them in the annotation bucket:
one JSON object per version (`schemas/<version>.json`, written once) and a `schemas/current` ref moved by
compare-and-swap, so every replica agrees on the version new tasks are labelled under.

Enforced rules (a submission breaking any is refused, every violation named, boxes numbered from 1):
- the verdict is "labelled", "nothing_to_label" or "unusable"; "labelled" needs at least one box, the other two
  take none;
- each box has a known class, finite coordinates, x2 > x1 and y2 > y1 (not degenerate), lies inside the image
  (half a pixel of rounding allowed at the edges) and is at least `min_box_px` wide and high."""
from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path

from minio import Minio

from libs.common.objectstore import RefConflict, compare_and_swap_ref, read_ref
from protos import events_pb2

VERDICTS = ("labelled", "nothing_to_label", "unusable")
# A box drawn to the image's edge in a browser may land a fraction of a pixel outside after scaling.
EDGE_TOLERANCE_PX = 0.5
DEFAULT_MIN_BOX_PX = 4.0
DEFAULT_RULES_SHOWN = (
    "Draw a box around every object of a listed class that is at least partly visible, tight to its visible "
    "extent.",
    "One box per object; do not box reflections, pictures or screens.",
    "Mark 'nothing to label' when no object of a listed class is visible, 'unusable' when the image cannot be "
    "judged (blurred, dark, corrupted).",
    "Accept a proposal only if its box and class are right; move, resize, relabel or delete it otherwise.",
)
VERSION_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SCHEMA_PREFIX = "schemas/"
CURRENT_KEY = "schemas/current"


class InvalidSchema(ValueError):
    """A schema that cannot be used (no classes, a class twice, a version that cannot name an object...)."""


class UnknownSchemaVersion(KeyError):
    """No schema was published under that version."""


class SchemaVersionExists(RuntimeError):
    """A different schema is already published under that version: versions are never rewritten."""


@dataclass(frozen=True)
class LabelSchema:
    version: str
    # Every class an annotator may use: the model's labels first (so a proposal's class_id is its index here),
    # then the site's.
    classes: tuple[str, ...]
    rules_shown: tuple[str, ...] = DEFAULT_RULES_SHOWN
    min_box_px: float = DEFAULT_MIN_BOX_PX
    # The classes added for the site (also in `classes`), and the model whose labels the others are.
    site_classes: tuple[str, ...] = ()
    source_model: str = ""
    description: str = ""
    # Set by SchemaStore.publish.
    published_at: str = ""
    published_by: str = ""
    _index: dict[str, int] = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "rules_shown", tuple(self.rules_shown))
        object.__setattr__(self, "site_classes", tuple(self.site_classes))
        if not VERSION_PATTERN.fullmatch(self.version or "") or self.version == "current":
            raise InvalidSchema(f"schema version {self.version!r}: letters, digits, '.', '_' or '-' "
                                "(at most 64, not 'current')")
        if not self.classes:
            raise InvalidSchema("a schema needs at least one class")
        twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
        if twice:
            raise InvalidSchema(f"classes listed twice: {', '.join(twice)}")
        if any(not c.strip() for c in self.classes):
            raise InvalidSchema("a class name is empty")
        if not set(self.site_classes) <= set(self.classes):
            raise InvalidSchema("site classes must be among the classes")
        if not (math.isfinite(self.min_box_px) and self.min_box_px >= 0):
            raise InvalidSchema(f"min_box_px must be a number >= 0, not {self.min_box_px}")
        object.__setattr__(self, "_index", {c: i for i, c in enumerate(self.classes)})

    def class_id(self, label: str) -> int:
        """The class's index in `classes` (KeyError for an unknown class)."""
        return self._index[label]

    def knows(self, label: str) -> bool:
        return label in self._index

    def violations(self, verdict: str, boxes: Sequence[events_pb2.Detection], width: int,
                   height: int) -> list[str]:
        """Every rule the submission breaks, for people to read; empty when it may be stored."""
        found = []
        if verdict not in VERDICTS:
            found.append(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
        elif verdict == "labelled" and not boxes:
            found.append("verdict 'labelled' needs at least one box (or mark 'nothing_to_label')")
        elif verdict != "labelled" and boxes:
            found.append(f"verdict {verdict!r} takes no boxes, got {len(boxes)}")
        for number, detection in enumerate(boxes, start=1):
            found.extend(f"box {number}: {problem}" for problem in self.box_problems(detection, width, height))
        return found

    def box_problems(self, detection: events_pb2.Detection, width: int, height: int) -> list[str]:
        problems = []
        name = detection.label
        if not name:
            problems.append("has no class")
        elif not self.knows(name):
            problems.append(f"class {name!r} is not in schema {self.version}")
        b = detection.box
        coordinates = (b.x1, b.y1, b.x2, b.y2)
        if not detection.HasField("box") or not all(math.isfinite(v) for v in coordinates):
            return problems + ["has no valid coordinates"]
        if b.x2 <= b.x1 or b.y2 <= b.y1:
            return problems + [f"is degenerate ({b.x1:g},{b.y1:g})-({b.x2:g},{b.y2:g}): x2 must exceed x1 and y2 "
                               "exceed y1"]
        t = EDGE_TOLERANCE_PX
        if b.x1 < -t or b.y1 < -t or b.x2 > width + t or b.y2 > height + t:
            problems.append(f"({b.x1:g},{b.y1:g})-({b.x2:g},{b.y2:g}) is not inside the {width}x{height} image")
        box_width, box_height = b.x2 - b.x1, b.y2 - b.y1
        if box_width < self.min_box_px or box_height < self.min_box_px:
            problems.append(f"{box_width:g}x{box_height:g} px is smaller than the minimum {self.min_box_px:g} px "
                            "a side")
        return problems

    # --- stored form ---------------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        content = asdict(self)
        content.pop("_index")
        return content

    @classmethod
    def from_json(cls, content: dict) -> "LabelSchema":
        known = {f for f in cls.__dataclass_fields__ if not f.startswith("_")}
        try:
            return cls(**{k: v for k, v in content.items() if k in known})
        except TypeError as exc:  # a required field missing
            raise InvalidSchema(f"not a label schema: {exc}") from exc

    def same_content(self, other: "LabelSchema") -> bool:
        """The same schema, whenever and by whom it was published."""
        return replace(self, published_at="", published_by="") == replace(other, published_at="", published_by="")


def model_dir_labels(model_dir: Path) -> list[str]:
    """The labels a converted model dir serves (labels.txt, or the file its model.json names), in class-id order."""
    model_dir = Path(model_dir)
    metadata = json.loads((model_dir / "model.json").read_text())
    return [line for line in (model_dir / metadata.get("labels", "labels.txt")).read_text().split("\n") if line]


def default_schema(model_labels: Sequence[str], site_classes: Sequence[str] = (), version: str = "1",
                   source_model: str = "", **fields) -> LabelSchema:
    """The model's labels (in its class-id order) plus the site's classes not among them."""
    extra = tuple(c for c in dict.fromkeys(site_classes) if c not in set(model_labels))
    return LabelSchema(version=version, classes=tuple(model_labels) + extra, site_classes=tuple(site_classes),
                       source_model=source_model, **fields)


def schema_key(version: str) -> str:
    return f"{SCHEMA_PREFIX}{version}.json"


class SchemaStore:
    """Label schemas in the annotation bucket. Published versions are immutable (read once, then cached); the
    current version is a ref moved by compare-and-swap."""

    def __init__(self, client: Minio, bucket: str) -> None:
        self.client = client
        self.bucket = bucket
        self._versions: dict[str, LabelSchema] = {}

    def get(self, version: str) -> LabelSchema:
        held = self._versions.get(version)
        if held is not None:
            return held
        found = read_ref(self.client, self.bucket, schema_key(version))
        if found is None:
            raise UnknownSchemaVersion(version)
        schema = LabelSchema.from_json(json.loads(found[0]))
        self._versions[version] = schema
        return schema

    def current_version(self) -> str | None:
        found = read_ref(self.client, self.bucket, CURRENT_KEY)
        return None if found is None else json.loads(found[0])["version"]

    def current(self) -> LabelSchema | None:
        """The schema new tasks are labelled under; None before any was published."""
        version = self.current_version()
        return None if version is None else self.get(version)

    def versions(self) -> list[str]:
        names = (o.object_name.removeprefix(SCHEMA_PREFIX)
                 for o in self.client.list_objects(self.bucket, prefix=SCHEMA_PREFIX))
        return sorted((n.removesuffix(".json") for n in names if n.endswith(".json")),
                      key=lambda v: (0, int(v), "") if v.isdigit() else (1, 0, v))

    def next_version(self) -> str:
        """One more than the highest numbered version."""
        return str(max((int(v) for v in self.versions() if v.isdigit()), default=0) + 1)

    def publish(self, schema: LabelSchema, by: str = "", make_current: bool = True) -> LabelSchema:
        """Stores `schema` under its version (written once: SchemaVersionExists when a different schema holds that
        version; publishing the same content again changes nothing) and, unless told otherwise, makes it current."""
        stamped = replace(schema, published_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                          published_by=by)
        content = json.dumps(stamped.to_json(), indent=1).encode()
        try:
            compare_and_swap_ref(self.client, self.bucket, schema_key(schema.version), content, None)
            self._versions[schema.version] = stamped
        except RefConflict:
            stored = self.get(schema.version)
            if not stored.same_content(schema):
                raise SchemaVersionExists(f"schema version {schema.version} is already published with other "
                                          "content: publish under a new version") from None
            stamped = stored
        if make_current:
            self.set_current(schema.version)
        return stamped

    def set_current(self, version: str, attempts: int = 20) -> None:
        """Makes a published version current (going back to an older one included)."""
        self.get(version)  # UnknownSchemaVersion before the ref names it
        content = json.dumps({"version": version, "set_at": time.time()}).encode()
        for _ in range(attempts):
            found = read_ref(self.client, self.bucket, CURRENT_KEY)
            if found is not None and json.loads(found[0])["version"] == version:
                return
            try:
                compare_and_swap_ref(self.client, self.bucket, CURRENT_KEY, content,
                                     None if found is None else found[1])
                return
            except RefConflict:
                continue  # another writer moved it: read again
        raise RuntimeError(f"schemas/current kept changing: {version} not made current after {attempts} attempts")

    def ensure_current(self, default: LabelSchema, by: str = "") -> LabelSchema:
        """The current schema; `default` published and made current first when there is none (at a service's
        first start: replicas racing publish the same content, which is no conflict)."""
        current = self.current()
        if current is not None:
            return current
        self.publish(default, by=by)
        return self.current()
