"""Dataset versions out to the formats training tools read (COCO detection JSON, the YOLO txt layout) and labelled
images in (COCO, Label Studio JSON) as Items whose images are stored once in the dataset store, faces blurred first.

Export (`export_coco`, `export_yolo`), into a folder:
- COCO: `DIR/annotations.json` beside the images, each image named by its blob's sha256 and an extension from its
  bytes (`<sha256>.jpg`), written once however many items share it. One file for all splits: each image entry
  carries `split` ("train", "val", "test") and Vigil's own fields (`vigil_item_id`, `camera_id`, `captured_at`,
  `verdict`, `source_task_ids`); `info` names the dataset and version. Categories are the label schema's classes
  when it is known (id = index + 1, a class in use the schema lacks appended), else the classes in use, sorted.
  Boxes are `bbox` [x, y, width, height] in pixels, `area` = width x height, `iscrowd` 0. An item labelled
  "nothing to label" is an image without annotations (a negative).
- YOLO (Ultralytics' layout): `images/<split>/<sha256>.<ext>`, `labels/<split>/<sha256>.txt` with one line
  `class cx cy w h` per box (normalised to 0..1, six decimals; an empty file for a negative), and `data.yaml`
  with the split folders, `nc` and `names` (class index -> name, the COCO categories' order). `data.yaml` names
  no `path`: tools take the folder it is in, so the export can be moved.
Images are read from the store verified, several at a time; an image already in the folder with its size is not
written again (exporting twice into one folder is cheap), and the annotation file is written last, by rename, so a
folder with one has every image it names.

Import (`import_coco`, `import_label_studio`):
- An item's id is stable across imports of the same labelled set: the image's `vigil_item_id` when the file came
  from a Vigil export (so an export imported again is the same items), else its file name as the COCO file gives
  it (Label Studio: the task's `vigil_task_id`, else an id derived from the image's address). Ids by name, not by
  content, so a relabelled image is one item relabelled in a diff, not one removed and another added.
- Images are blurred (faces, by the CenterFace model inference serves: libs/common/faces.py) before anything is
  stored, unless no blurrer is given (the CLI's --no-blur-faces); the item's blob is the sha256 of what is stored.
- Boxes are [x1, y1, x2, y2] in pixels, rounded to 1e-6 px (undoing the float noise of x + w), and clipped to the
  image; a COCO crowd region (iscrowd 1) is not a box and is left out (counted). An image without boxes is
  "nothing to label". Width and height are the image's own; a COCO entry saying otherwise is refused.
- Splits: a Vigil export's `split` is kept; otherwise an image with a camera and a capture time takes the store's
  stable split of its group (camera + 10-minute bucket), and one without is a group of its own (its split from
  its item id): without times, neighbouring frames cannot be told apart.
Every problem of an import is named at once (ImportRefused), and none is stored unless all images were found."""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath
from typing import Protocol

import yaml
from PIL import Image

from services.annotation.exports import LabelStudioImportError, from_label_studio
from services.datasets.manifest import SPLITS, Item, Label, Manifest
from services.datasets.splits import assign_split

ANNOTATIONS_FILE = "annotations.json"
DATA_YAML = "data.yaml"
COORDINATE_DECIMALS = 6
_WORKERS = 8
# (bytes at the start, extension): enough to name what cameras and labelling tools produce.
_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"), (b"BM", ".bmp"),
          (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))

Progress = Callable[[int, int], None]  # (done, total)


class ImportRefused(ValueError):
    """An import that cannot be made; `problems` names every one."""

    def __init__(self, problems: list[str], shown: int = 10):
        self.problems = list(problems)
        more = f"; and {len(self.problems) - shown} more" if len(self.problems) > shown else ""
        super().__init__(f"import refused, {len(self.problems)} problem(s): "
                         + "; ".join(self.problems[:shown]) + more)


def image_extension(data: bytes) -> str:
    for magic, extension in _MAGIC:
        if data.startswith(magic):
            return extension
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".bin"


# --- export --------------------------------------------------------------------------------------------------------
def categories(manifest: Manifest, schema_classes: Sequence[str] | None = None) -> list[str]:
    """The class names in category order: the schema's, then any class in use it lacks; else those in use, sorted."""
    used = sorted(manifest.statistics.get("boxes_per_class", {}))
    if not schema_classes:
        return used
    names = list(dict.fromkeys(schema_classes))
    return names + [name for name in used if name not in names]


@dataclass
class ExportReport:
    out: Path
    format: str
    items: int = 0
    boxes: int = 0
    images_written: int = 0  # files written (an image already there with its size is not written again)
    bytes_written: int = 0
    seconds: float = 0.0


class _Throttled:
    """Calls `progress` at most every `every_s` seconds, and at the end."""

    def __init__(self, progress: Progress | None, total: int, every_s: float = 1.0):
        self.progress, self.total, self.every_s = progress, total, every_s
        self.last = time.monotonic()

    def __call__(self, done: int) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if done == self.total or now - self.last >= self.every_s:
            self.last = now
            self.progress(done, self.total)


@dataclass(frozen=True)
class _Target:
    folder: Path
    stem: str  # the file's name without its extension, which the image's bytes give
    blob: str
    size: int


def _existing(folder: Path) -> dict[str, tuple[str, int]]:
    """stem -> (file name, size) of the files already in `folder`."""
    found = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file() and not entry.name.startswith("."):
                stem, _, _ = entry.name.rpartition(".")
                found[stem or entry.name] = (entry.name, entry.stat().st_size)
    return found


def _write_images(store, targets: list[_Target], report: ExportReport, progress: Progress | None
                  ) -> dict[str, str]:
    """Writes each target from its blob, `_WORKERS` at a time, named by its stem and the extension its bytes
    give; returns blob -> extension. A file already there with the blob's size is left as it is (named by its
    content, it is that content)."""
    existing = {folder: _existing(folder) for folder in {t.folder for t in targets}}

    def write(target: _Target) -> tuple[str, int]:
        name, size = existing[target.folder].get(target.stem, ("", -1))
        if size == target.size:
            return name[len(target.stem):], 0
        data = store.get_blob(target.blob)
        extension = image_extension(data)
        path = target.folder / (target.stem + extension)
        partial = path.with_name(f".{path.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, path)
        return extension, len(data)

    extensions: dict[str, str] = {}
    tick = _Throttled(progress, len(targets))
    with ThreadPoolExecutor(_WORKERS) as pool:
        for done, (target, (extension, written)) in enumerate(zip(targets, pool.map(write, targets)), start=1):
            extensions[target.blob] = extension
            if written:
                report.images_written += 1
                report.bytes_written += written
            tick(done)
    return extensions


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def _iso(seconds: float) -> str:
    if not seconds:
        return ""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat().replace("+00:00", "Z")


def coco_document(manifest: Manifest, extensions: dict[str, str],
                  schema_classes: Sequence[str] | None = None) -> dict:
    """The version as a COCO detection document (images named `<blob><extension>`)."""
    names = categories(manifest, schema_classes)
    category_of = {name: number for number, name in enumerate(names, start=1)}
    images, annotations = [], []
    for image_id, item in enumerate(manifest.items, start=1):
        images.append({"id": image_id, "file_name": item.blob + extensions[item.blob], "width": item.width,
                       "height": item.height, "date_captured": _iso(item.captured_at), "split": item.split,
                       "vigil_item_id": item.item_id, "camera_id": item.camera_id, "captured_at": item.captured_at,
                       "verdict": item.verdict, "source_task_ids": list(item.source_task_ids)})
        for label in item.labels:
            x1, y1, x2, y2 = label.box
            width, height = x2 - x1, y2 - y1
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category_of[label.label], "bbox": [x1, y1, width, height],
                                "area": width * height, "iscrowd": 0})
    return {
        "info": {"description": f"Vigil dataset {manifest.dataset} version {manifest.version}",
                 "dataset": manifest.dataset, "version": manifest.version, "schema_version": manifest.schema_version,
                 "message": manifest.message, "author": manifest.author, "date_created": manifest.created_at},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [{"id": category_of[name], "name": name, "supercategory": ""} for name in names],
    }


def export_coco(store, manifest: Manifest, out: Path, schema_classes: Sequence[str] | None = None,
                progress: Progress | None = None) -> ExportReport:
    """Writes the version to `out` as COCO: the images, then `annotations.json`."""
    started = time.monotonic()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = ExportReport(out=out, format="coco", items=len(manifest.items),
                          boxes=sum(len(item.labels) for item in manifest.items))
    sizes = {item.blob: item.size for item in manifest.items}
    extensions = _write_images(store, [_Target(out, blob, blob, size) for blob, size in sorted(sizes.items())],
                               report, progress)
    document = coco_document(manifest, extensions, schema_classes)
    _write_atomically(out / ANNOTATIONS_FILE, json.dumps(document))
    report.seconds = time.monotonic() - started
    return report


def yolo_lines(item: Item, class_index: dict[str, int]) -> list[str]:
    """The item's boxes as YOLO label lines: class, centre x, centre y, width, height, normalised to the image."""
    lines = []
    for label in item.labels:
        x1, y1, x2, y2 = label.box
        cx, cy = (x1 + x2) / 2 / item.width, (y1 + y2) / 2 / item.height
        w, h = (x2 - x1) / item.width, (y2 - y1) / item.height
        lines.append(f"{class_index[label.label]} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}")
    return lines


def export_yolo(store, manifest: Manifest, out: Path, schema_classes: Sequence[str] | None = None,
                progress: Progress | None = None) -> ExportReport:
    """Writes the version to `out` in the YOLO layout: images and label files per split, then `data.yaml`. Two
    items of one split sharing an image are told apart by their item id's hash after the blob's name."""
    started = time.monotonic()
    out = Path(out)
    names = categories(manifest, schema_classes)
    class_index = {name: index for index, name in enumerate(names)}
    for split in SPLITS:
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "labels" / split).mkdir(parents=True, exist_ok=True)
    report = ExportReport(out=out, format="yolo", items=len(manifest.items),
                          boxes=sum(len(item.labels) for item in manifest.items))
    targets, taken = [], set()
    for item in manifest.items:
        stem = item.blob
        if (item.split, stem) in taken:
            stem = f"{item.blob}-{hashlib.sha256(item.item_id.encode()).hexdigest()[:8]}"
        taken.add((item.split, stem))
        targets.append(_Target(out / "images" / item.split, stem, item.blob, item.size))
        lines = yolo_lines(item, class_index)
        (out / "labels" / item.split / f"{stem}.txt").write_text("".join(f"{line}\n" for line in lines))
    _write_images(store, targets, report, progress)
    data = {"train": "images/train", "val": "images/val", "test": "images/test", "nc": len(names),
            "names": dict(enumerate(names))}
    _write_atomically(out / DATA_YAML, f"# Vigil dataset {manifest.dataset} version {manifest.version}\n"
                      + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    report.seconds = time.monotonic() - started
    return report


# --- import --------------------------------------------------------------------------------------------------------
@dataclass
class ImportResult:
    items: list[Item]
    images_stored: int = 0
    faces_blurred: int = 0
    boxes: int = 0
    crowd_regions_left_out: int = 0
    boxes_clipped: int = 0
    left_out: list[str] = field(default_factory=list)  # what was not imported, and why (said, not hidden)


class Blurrer(Protocol):
    """What blurs faces (libs/common/faces.FaceBlurrer): `blur(image) -> (image, faces)`."""

    def blur(self, image: bytes) -> tuple[bytes, int]: ...


def _coordinate(value: float) -> float:
    return round(float(value), COORDINATE_DECIMALS) + 0.0  # + 0.0: no -0.0 in a manifest


def _clipped(box: Sequence[float], width: int, height: int) -> tuple[tuple[float, float, float, float], bool]:
    x1, y1, x2, y2 = (_coordinate(v) for v in box)
    clipped = (min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(max(x2, 0.0), width),
               min(max(y2, 0.0), height))
    return clipped, clipped != (x1, y1, x2, y2)


def _image_size(source: bytes | Path) -> tuple[int, int]:
    """Width and height from the image's header (a file is not read further)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as picture:
        return picture.size


def _seconds_of(text) -> float:
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) if math.isfinite(text) else 0.0
    if not isinstance(text, str) or not text:
        return 0.0
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace(" ", "T"))
    except ValueError:
        return 0.0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


@dataclass
class _Pending:
    """An image to store (read when it is stored: an import of 10,000 photos is not held in memory) and the item
    it becomes."""
    item_id: str
    load: Callable[[], bytes]
    width: int
    height: int
    camera_id: str
    captured_at: float
    split: str
    source_task_ids: tuple[str, ...]
    boxes: list[tuple[str, Sequence[float]]]


def _store_all(store, pending: list[_Pending], blurrer: Blurrer | None, result: ImportResult,
               progress: Progress | None) -> None:
    """Blurs (when a blurrer is given) and stores each image, several at a time, and makes its item."""
    def stored(p: _Pending) -> tuple[str, int, int]:
        image = p.load()
        data, faces = blurrer.blur(image) if blurrer is not None else (image, 0)
        return store.put_blob(data), len(data), faces

    tick = _Throttled(progress, len(pending))
    with ThreadPoolExecutor(4) as pool:
        for done, (p, (blob, size, faces)) in enumerate(zip(pending, pool.map(stored, pending)), start=1):
            result.faces_blurred += faces
            result.images_stored += 1
            labels = []
            for name, box in p.boxes:
                clipped, changed = _clipped(box, p.width, p.height)
                result.boxes_clipped += changed
                labels.append(Label(name, clipped))
            result.boxes += len(labels)
            split = p.split if p.split in SPLITS else (
                "" if p.camera_id and p.captured_at else assign_split(f"import:{p.item_id}", store.ratios))
            result.items.append(Item(item_id=p.item_id, blob=blob, size=size, width=p.width, height=p.height,
                                     camera_id=p.camera_id, captured_at=p.captured_at, split=split,
                                     source_task_ids=p.source_task_ids, labels=tuple(labels),
                                     verdict="labelled" if labels else "nothing_to_label"))
            tick(done)


def _find(images_dir: Path, name: str) -> Path | None:
    """The file `name` names in `images_dir`: its relative path, else its base name (an absolute path or a URL is
    looked for by its base name: images are read from the folder given, nowhere else)."""
    relative = PurePosixPath(name.replace("\\", "/"))
    candidates = [images_dir / relative.name] if relative.name else []
    if relative.parts and not relative.is_absolute() and ".." not in relative.parts and ":" not in relative.parts[0]:
        candidates.insert(0, images_dir / relative)
    return next((candidate for candidate in candidates if candidate.is_file()), None)


def import_coco(store, coco: dict, images_dir: Path, *, blurrer: Blurrer | None, camera_id: str = "",
                progress: Progress | None = None) -> ImportResult:
    """The images of a COCO detection document, found in `images_dir`, stored (blurred) as Items."""
    if not isinstance(coco, dict) or not isinstance(coco.get("images"), list):
        raise ImportRefused(["not a COCO detection file: no 'images' list"])
    images_dir = Path(images_dir)
    names = {c.get("id"): c.get("name") for c in coco.get("categories") or [] if isinstance(c, dict)}
    boxes: dict[object, list] = {}
    problems, result = [], ImportResult(items=[])
    for number, annotation in enumerate(coco.get("annotations") or [], start=1):
        try:
            name = names.get(annotation["category_id"])
            x, y, w, h = (float(v) for v in annotation["bbox"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"annotation {annotation.get('id', number) if isinstance(annotation, dict) else number}"
                            ": no category_id or bbox [x, y, width, height]")
            continue
        if annotation.get("iscrowd"):
            result.crowd_regions_left_out += 1
            continue
        if not name:
            problems.append(f"annotation {annotation.get('id', number)}: category {annotation['category_id']} "
                            "is not among the categories")
            continue
        boxes.setdefault(annotation.get("image_id"), []).append((str(name), (x, y, x + w, y + h)))
    pending, seen = [], set()
    for image in coco["images"]:
        file_name = str(image.get("file_name") or "")
        item_id = str(image.get("vigil_item_id") or file_name)
        where = f"image {image.get('id')} ({file_name or 'no file_name'})"
        if not item_id:
            problems.append(f"{where}: no file_name")
            continue
        if item_id in seen:
            problems.append(f"{where}: item id {item_id!r} appears twice")
            continue
        seen.add(item_id)
        path = _find(images_dir, file_name)
        if path is None:
            problems.append(f"{where}: not found in {images_dir}")
            continue
        try:
            width, height = _image_size(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}: not an image ({exc})")
            continue
        if (image.get("width"), image.get("height")) not in ((width, height), (None, None)):
            problems.append(f"{where}: the file is {width}x{height}, the COCO file says "
                            f"{image.get('width')}x{image.get('height')}")
            continue
        pending.append(_Pending(
            item_id=item_id, load=path.read_bytes, width=width, height=height,
            camera_id=str(image.get("camera_id") or camera_id),
            captured_at=_seconds_of(image.get("captured_at") or image.get("date_captured")),
            split=str(image.get("split") or ""), source_task_ids=tuple(image.get("source_task_ids") or ()),
            boxes=boxes.get(image.get("id"), [])))
    if problems:
        raise ImportRefused(problems)
    _store_all(store, pending, blurrer, result, progress)
    return result


def _label_studio_image(address: str, images_dir: Path | None, read_s3: Callable[[str, str], bytes] | None
                        ) -> bytes | str:
    """The image's bytes, or why they cannot be had. Looked for in `images_dir` first (by the path Label Studio
    gives, or the `d` of a /data/local-files/?d= address, else by base name); then s3:// through `read_s3`. Any
    other address (http) is not fetched: give its file in --images."""
    parsed = urllib.parse.urlparse(address)
    local = urllib.parse.parse_qs(parsed.query).get("d", [None])[0] or urllib.parse.unquote(parsed.path)
    if images_dir is not None and local:
        found = _find(images_dir, local.lstrip("/")) or _find(images_dir, PurePosixPath(local).name)
        if found is not None:
            return found.read_bytes()
    if parsed.scheme == "s3" and read_s3 is not None:
        try:
            return read_s3(parsed.netloc, parsed.path.lstrip("/"))
        except Exception as exc:  # noqa: BLE001 (named as the import's problem)
            return f"{address} cannot be read ({exc})"
    return f"{address} is not in {images_dir or 'the images folder (--images)'}"


def _final_annotation(task: dict) -> dict | None:
    """The task's last annotation not cancelled (a person's final word), None when it has none."""
    kept = [a for a in task.get("annotations") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
    return kept[-1] if kept else None


def import_label_studio(store, tasks: list, images_dir: Path | None, *, blurrer: Blurrer | None,
                        read_s3: Callable[[str, str], bytes] | None = None, image_key: str = "image",
                        progress: Progress | None = None) -> ImportResult:
    """Label Studio tasks (its JSON export) with their final annotation as Items, images stored (blurred). A task
    without an annotation is left out (listed in `left_out`); one whose result is empty is "nothing to label".
    Boxes are read by services/annotation/exports.from_label_studio (percent of the image to pixels, rotated
    regions refused), the annotation's result given to it in place of a prediction."""
    if not isinstance(tasks, list):
        raise ImportRefused(["Label Studio tasks are a JSON list"])
    problems, result, pending, seen = [], ImportResult(items=[]), [], set()
    for position, task in enumerate(tasks):
        where = f"task {position}" + (f" (id {task.get('id')})" if isinstance(task, dict) and "id" in task else "")
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            problems.append(f"{where}: not a Label Studio task (no data object)")
            continue
        annotation = _final_annotation(task)
        if annotation is None:
            result.left_out.append(f"{where}: no annotation")
            continue
        address = task["data"].get(image_key)
        if not isinstance(address, str) or not address:
            problems.append(f"{where}: data.{image_key} names no image")
            continue
        data = _label_studio_image(address, images_dir, read_s3)
        if isinstance(data, str):
            problems.append(f"{where}: {data}")
            continue
        try:
            width, height = _image_size(data)
        except (OSError, ValueError) as exc:
            problems.append(f"{where}: {address} is not an image ({exc})")
            continue
        as_task = {"data": {**task["data"], "width": width, "height": height},
                   "predictions": [{"result": [dict(r, original_width=r.get("original_width", width),
                                                    original_height=r.get("original_height", height))
                                               for r in annotation.get("result") or [] if isinstance(r, dict)]}]}
        try:
            (imported,) = from_label_studio([as_task], image_key=image_key)
        except LabelStudioImportError as exc:
            problems.append(f"{where}: {str(exc).removeprefix('task 0: ')}")
            continue
        t = imported.task
        if t.task_id in seen:
            problems.append(f"{where}: item id {t.task_id!r} appears twice")
            continue
        seen.add(t.task_id)
        vigil_task = task["data"].get("vigil_task_id")
        pending.append(_Pending(
            item_id=t.task_id, load=lambda data=data: data, width=width, height=height, camera_id=t.camera_id,
            captured_at=t.captured_at.seconds + t.captured_at.nanos / 1e9, split="",
            source_task_ids=(str(vigil_task),) if vigil_task else (),
            # The proto's boxes are float32: a thousandth of a pixel is what they hold.
            boxes=[(d.label, tuple(round(v, 3) for v in (d.box.x1, d.box.y1, d.box.x2, d.box.y2)))
                   for d in t.proposals]))
    if problems:
        raise ImportRefused(problems)
    _store_all(store, pending, blurrer, result, progress)
    return result

