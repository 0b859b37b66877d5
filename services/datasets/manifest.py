"""Dataset versions as data, free of any store: an item (one image, its boxes and where it comes from), a manifest
(the items of a version with its parents, message, author, time, schema version and statistics) and its
content-addressed id: the first 16 hex of the sha256 of the canonical JSON (sorted keys, no whitespace) of the
manifest without the id itself, so the same content always has the same id and a changed byte another one.

An item's labels are kept in a canonical order (by class, then box), so the order boxes were drawn in changes
neither the id nor a diff. `captured_at` is seconds since the epoch (UTC); `created_at` is ISO 8601 with a Z."""
from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Iterable, NamedTuple

SPLITS = ("train", "val", "test")
VERDICTS = ("labelled", "nothing_to_label")
VERSION_ID_HEX = 16
_VERSION_ID = re.compile(rf"^[0-9a-f]{{{VERSION_ID_HEX}}}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class InvalidName(ValueError):
    """A dataset, branch or tag name that cannot name an object key."""


class CorruptManifest(ValueError):
    """A stored manifest whose content does not hash to its id, or that is not a manifest at all."""


def check_name(name: str, what: str = "dataset") -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidName(f"{name!r} is not a {what} name: letters, digits, '.', '_', '-', at most 128, "
                          "starting with a letter or digit")
    return name


def is_version_id(text: str) -> bool:
    return bool(_VERSION_ID.match(text or ""))


class Label(NamedTuple):
    """One box: a tuple, so a 10,000-item manifest's boxes are made and compared quickly; ordered by class, then
    box (the canonical order within an item)."""
    label: str
    box: tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels

    def to_json(self) -> dict:
        return {"label": self.label, "box": list(self.box)}

    @classmethod
    def from_json(cls, content: dict) -> "Label":
        x1, y1, x2, y2 = content["box"]
        return cls(content["label"], (float(x1), float(y1), float(x2), float(y2)))


@dataclass(frozen=True, slots=True)
class Item:
    item_id: str  # stable: the source task id, or the import's image key
    blob: str  # sha256 of the image
    size: int
    width: int
    height: int
    camera_id: str = ""
    captured_at: float = 0.0
    split: str = ""  # "" until the store assigns the stable split of the item's group
    source_task_ids: tuple[str, ...] = ()
    labels: tuple[Label, ...] = ()
    verdict: str = "labelled"
    schema_version: str = ""  # the label schema the boxes were drawn under ("" = the version's)

    def __post_init__(self) -> None:
        # (A box with NaN, refused by the validation gate, sorts arbitrarily but never raises.)
        if len(self.labels) > 1 or not isinstance(self.labels, tuple):
            object.__setattr__(self, "labels", tuple(sorted(self.labels)))
        if not isinstance(self.source_task_ids, tuple):
            object.__setattr__(self, "source_task_ids", tuple(self.source_task_ids))

    def with_split(self, split: str) -> "Item":
        return replace(self, split=split)

    def to_json(self) -> dict:
        return {"item_id": self.item_id, "blob": self.blob, "size": self.size, "width": self.width,
                "height": self.height, "camera_id": self.camera_id, "captured_at": self.captured_at,
                "split": self.split, "source_task_ids": list(self.source_task_ids),
                "labels": [label.to_json() for label in self.labels], "verdict": self.verdict,
                "schema_version": self.schema_version}

    @classmethod
    def from_json(cls, c: dict) -> "Item":
        return cls(item_id=c["item_id"], blob=c["blob"], size=int(c["size"]), width=int(c["width"]),
                   height=int(c["height"]), camera_id=c.get("camera_id", ""),
                   captured_at=float(c.get("captured_at", 0.0)), split=c.get("split", ""),
                   source_task_ids=tuple(c.get("source_task_ids", ())),
                   labels=tuple(Label.from_json(label) for label in c.get("labels", ())),
                   verdict=c.get("verdict", "labelled"), schema_version=c.get("schema_version", ""))


def statistics(items: Iterable[Item]) -> dict:
    """Items, boxes per class, items per camera and per split (keys sorted, so the JSON is canonical)."""
    count, boxes, cameras, splits = 0, Counter(), Counter(), Counter()
    for item in items:
        count += 1
        cameras[item.camera_id] += 1
        splits[item.split] += 1
        boxes.update(label.label for label in item.labels)
    return {"items": count, "boxes_per_class": dict(sorted(boxes.items())),
            "items_per_camera": dict(sorted(cameras.items())), "items_per_split": dict(sorted(splits.items()))}


def canonical_json(content: dict) -> bytes:
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode()


def _id_of(canonical: bytes) -> str:
    return hashlib.sha256(canonical).hexdigest()[:VERSION_ID_HEX]


def version_id(content: dict) -> str:
    """The id of a manifest's content: the first 16 hex of the sha256 of its canonical JSON without "version"."""
    return _id_of(canonical_json({k: v for k, v in content.items() if k != "version"}))


def utc_now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Manifest:
    dataset: str
    version: str
    parents: tuple[str, ...]
    message: str
    author: str
    created_at: str
    schema_version: str
    items: tuple[Item, ...]
    statistics: dict = field(compare=False)
    _by_id: dict = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]
    # The canonical JSON, once made or read (a 10,000-item manifest is a few MB: made once).
    _bytes: bytes = field(default=None, init=False, repr=False, compare=False)  # type: ignore[assignment]

    @property
    def parent(self) -> str | None:
        """The first parent (the branch's previous head), None for a first version."""
        return self.parents[0] if self.parents else None

    def item(self, item_id: str) -> Item | None:
        return self.items_by_id().get(item_id)

    def items_by_id(self) -> dict[str, Item]:
        if self._by_id is None:
            object.__setattr__(self, "_by_id", {item.item_id: item for item in self.items})
        return self._by_id

    def blobs(self) -> set[str]:
        return {item.blob for item in self.items}

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "version": self.version, "parents": list(self.parents),
                "message": self.message, "author": self.author, "created_at": self.created_at,
                "schema_version": self.schema_version, "items": [item.to_json() for item in self.items],
                "statistics": self.statistics}

    def to_bytes(self) -> bytes:
        if self._bytes is None:
            object.__setattr__(self, "_bytes", canonical_json(self.to_json()))
        return self._bytes

    @classmethod
    def from_json(cls, content: dict, verify: bool = True) -> "Manifest":
        """The manifest of stored content; with `verify`, CorruptManifest unless the content hashes to its id."""
        try:
            if verify and version_id(content) != content["version"]:
                raise CorruptManifest(f"manifest {content.get('version')!r} of {content.get('dataset')!r}: its "
                                      f"content hashes to {version_id(content)}, not to its id")
            return cls(dataset=content["dataset"], version=content["version"], parents=tuple(content["parents"]),
                       message=content["message"], author=content["author"], created_at=content["created_at"],
                       schema_version=content["schema_version"],
                       items=tuple(Item.from_json(item) for item in content["items"]),
                       statistics=content["statistics"])
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, CorruptManifest):
                raise
            raise CorruptManifest(f"not a dataset manifest: {exc!r}") from exc

    @classmethod
    def from_bytes(cls, data: bytes) -> "Manifest":
        """The manifest stored as `data`, verified against its id."""
        try:
            content = json.loads(data)
        except ValueError as exc:
            raise CorruptManifest(f"not JSON: {exc}") from exc
        if not isinstance(content, dict):
            raise CorruptManifest("not a dataset manifest: not a JSON object")
        # Stored manifests are canonical JSON, where "version" sorts last: the bytes before it are the content the
        # id hashes, so checking costs one sha256 instead of re-serialising. Anything else is checked the long way.
        suffix = f',"version":"{content.get("version")}"}}'.encode()
        if data.endswith(suffix) and _id_of(data[:-len(suffix)] + b"}") == content["version"]:
            manifest = cls.from_json(content, verify=False)
            object.__setattr__(manifest, "_bytes", bytes(data))
            return manifest
        return cls.from_json(content)


def build_manifest(dataset: str, items: Iterable[Item], *, parents: Iterable[str] = (), message: str = "",
                   author: str = "", schema_version: str = "", created_at: str | None = None) -> Manifest:
    """A new manifest: items sorted by item_id, statistics computed, the id derived from the content."""
    ordered = tuple(sorted(items, key=lambda item: item.item_id))
    content = {"dataset": dataset, "parents": list(parents), "message": message, "author": author,
               "created_at": created_at or utc_now_iso(), "schema_version": schema_version,
               "items": [item.to_json() for item in ordered], "statistics": statistics(ordered)}
    without_id = canonical_json(content)
    version = _id_of(without_id)
    manifest = Manifest(dataset=dataset, version=version, parents=tuple(content["parents"]), message=message,
                        author=author, created_at=content["created_at"], schema_version=schema_version,
                        items=ordered, statistics=content["statistics"])
    # "version" sorts after every other key, so the stored form is the id-less form with it appended.
    object.__setattr__(manifest, "_bytes", without_id[:-1] + f',"version":"{version}"}}'.encode())
    return manifest
