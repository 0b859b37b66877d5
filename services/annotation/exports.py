"""Labels out, tasks in: COCO (object detection) and Label Studio's task JSON. Pure: events in, dicts out.

- `to_coco(labels, schema)`: the accepted labels (the latest accepted AnnotationLabel of each task; a task marked
  "nothing to label" is an image without annotations, a negative) as a COCO detection file: `images` (file_name is
  the image's key in the annotation bucket), `categories` (the schema's classes, id = class index + 1; a class a
  label uses that the schema lacks is appended, never dropped), `annotations` with `bbox` [x, y, width, height]
  in pixels, `area`, `iscrowd` 0.
- `to_label_studio(tasks, labels)`: one Label Studio task per AnnotationTask, as its import format documents
  (labelstud.io/guide/predictions, /guide/task_format): `data.image` (an s3:// URI by default, or what
  `image_url` gives), `predictions` (the model's proposals as `rectanglelabels` results, x/y/width/height in
  percent of the image, each with its score, the prediction with the model version and its best score) and
  `annotations` (the task's accepted label). Vigil's own fields ride in `data` under `vigil_*`, which Label
  Studio keeps and exports back.
- `from_label_studio(tasks)`: Label Studio tasks (Vigil's export or anyone's) to AnnotationTasks with reason
  "imported", their proposals from the first prediction; a task id is kept from `data.vigil_task_id`, else
  derived from the image's address, so importing the same file twice makes the same tasks. An image not in the
  object store (an http(s) URL) is named in ImportedTask.image_url for the importer to fetch and store.

The labelling config these match (`label_studio_config(schema)`): an Image named "image" with value $image and
RectangleLabels named "label" over it. `Exports` serves them over the queue (web/api.py's /api/export and
/api/import)."""
from __future__ import annotations

import math
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from xml.sax.saxutils import quoteattr

from protos import events_pb2
from services.annotation.schemas import LabelSchema

FROM_NAME, TO_NAME = "label", "image"
IMPORTED_REASON = "imported"
IMPORT_NAMESPACE = uuid.UUID("0f6b7e2c-3d41-4a8e-b5c9-6e2d8a1f4c73")


class LabelStudioImportError(ValueError):
    """A Label Studio task that cannot become an AnnotationTask (no image, no size, a box not in percent...)."""


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


def _iso(ts) -> str | None:
    if not ts.seconds and not ts.nanos:
        return None
    return datetime.fromtimestamp(_seconds(ts), timezone.utc).isoformat().replace("+00:00", "Z")


def latest_accepted(labels: Iterable[events_pb2.AnnotationLabel]) -> dict[str, events_pb2.AnnotationLabel]:
    """Per task, the last accepted label in the order given (vigil.annotations is keyed by task id, so one task's
    events are in order on one partition): a later review overrides an earlier acceptance."""
    latest: dict[str, events_pb2.AnnotationLabel] = {}
    for label in labels:
        if label.status == "accepted":
            latest[label.task_id] = label
    return latest


# --- COCO --------------------------------------------------------------------------------------------------------
def to_coco(labels: Iterable[events_pb2.AnnotationLabel], schema: LabelSchema) -> dict:
    accepted = list(latest_accepted(labels).values())
    names = list(schema.classes)
    for label in accepted:
        names.extend(d.label for d in label.labels if d.label not in names)
    category_of = {name: i + 1 for i, name in enumerate(names)}
    images, annotations = [], []
    for image_id, label in enumerate(accepted, start=1):
        images.append({
            "id": image_id, "file_name": label.frame.key, "width": label.width, "height": label.height,
            "date_captured": _iso(label.captured_at) or "",
            "vigil_task_id": label.task_id, "vigil_label_id": label.label_id, "camera_id": label.camera_id,
            "frame_event_id": label.frame_event_id, "verdict": label.verdict, "schema_version": label.schema_version,
        })
        for detection in label.labels:
            b = detection.box
            width, height = b.x2 - b.x1, b.y2 - b.y1
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category_of[detection.label],
                "bbox": [b.x1, b.y1, width, height], "area": width * height, "iscrowd": 0,
            })
    return {
        "info": {"description": "Vigil accepted annotations", "version": schema.version,
                 "date_created": datetime.now(timezone.utc).isoformat(timespec="seconds")},
        "licenses": [],
        "images": images,
        "categories": [{"id": category_of[n], "name": n,
                        "supercategory": "site" if n in schema.site_classes else
                        ("model" if n in schema.classes else "unlisted")} for n in names],
        "annotations": annotations,
    }


# --- Label Studio ------------------------------------------------------------------------------------------------
def s3_uri(ref: events_pb2.ObjectRef) -> str:
    return f"s3://{ref.bucket}/{ref.key}"


def _region(detection: events_pb2.Detection, width: int, height: int, region_id: str,
            with_score: bool) -> dict:
    b = detection.box
    region = {
        "id": region_id, "type": "rectanglelabels", "from_name": FROM_NAME, "to_name": TO_NAME,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": {"x": 100.0 * b.x1 / width, "y": 100.0 * b.y1 / height,
                  "width": 100.0 * (b.x2 - b.x1) / width, "height": 100.0 * (b.y2 - b.y1) / height,
                  "rotation": 0, "rectanglelabels": [detection.label]},
    }
    if with_score:
        region["score"] = detection.score
    return region


def _regions(detections: Sequence[events_pb2.Detection], width: int, height: int, prefix: str,
             with_score: bool) -> list[dict]:
    return [_region(d, width, height, f"{prefix}{i}", with_score) for i, d in enumerate(detections)]


def to_label_studio(tasks: Iterable[events_pb2.AnnotationTask],
                    labels: Iterable[events_pb2.AnnotationLabel] = (),
                    image_url: Callable[[events_pb2.ObjectRef], str] = s3_uri) -> list[dict]:
    accepted = latest_accepted(labels)
    exported = []
    for task in tasks:
        if not task.width or not task.height:
            raise ValueError(f"task {task.task_id} has no image size: its boxes cannot be put in percent")
        item: dict = {"data": {
            "image": image_url(task.frame), "vigil_task_id": task.task_id, "camera_id": task.camera_id,
            "frame_event_id": task.frame_event_id, "reason": task.reason, "reason_detail": task.reason_detail,
            "captured_at": _iso(task.captured_at), "width": task.width, "height": task.height,
            "state": task.state, "schema_version": task.schema_version,
            "image_sha256": task.frame.sha256,
        }}
        if task.proposals:
            item["predictions"] = [{
                "model_version": f"{task.model.name}@{task.model.version}" if task.model.name else "",
                "score": max(d.score for d in task.proposals),
                "result": _regions(task.proposals, task.width, task.height, "p", with_score=True),
            }]
        label = accepted.get(task.task_id)
        if label is not None:
            annotation = {
                "result": _regions(label.labels, task.width, task.height, "a", with_score=False),
                "was_cancelled": False, "ground_truth": False,
                "created_at": _iso(label.envelope.event_time),
                "vigil_label_id": label.label_id, "vigil_annotator": label.annotator,
                "vigil_reviewer": label.reviewer, "vigil_verdict": label.verdict,
            }
            item["annotations"] = [annotation]
        exported.append(item)
    return exported


def label_studio_config(schema: LabelSchema) -> str:
    """The Label Studio labelling config the exported tasks match."""
    choices = "\n".join(f"    <Label value={quoteattr(name)}/>" for name in schema.classes)
    return (f'<View>\n  <Image name="{TO_NAME}" value="$image"/>\n'
            f'  <RectangleLabels name="{FROM_NAME}" toName="{TO_NAME}">\n{choices}\n  </RectangleLabels>\n</View>\n')


@dataclass(frozen=True)
class ImportedTask:
    task: events_pb2.AnnotationTask
    # Set when the image is not in the object store (http(s)): the importer fetches it and stores it.
    image_url: str | None


def _ref_of(address: str) -> events_pb2.ObjectRef | None:
    if not address.startswith("s3://"):
        return None
    bucket, _, key = address.removeprefix("s3://").partition("/")
    if not bucket or not key:
        raise LabelStudioImportError(f"not an s3://bucket/key address: {address!r}")
    return events_pb2.ObjectRef(bucket=bucket, key=key)


def _number(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LabelStudioImportError(f"{what} is not a number: {value!r}")
    return float(value)


def _proposal(region: dict, width: int, height: int) -> events_pb2.Detection | None:
    if region.get("type") != "rectanglelabels":
        return None  # another tool's result (a choice, a polygon): not a box
    value = region.get("value") or {}
    names = value.get("rectanglelabels") or []
    if not names:
        raise LabelStudioImportError(f"region {region.get('id')!r} has no rectanglelabels")
    if _number(value.get("rotation", 0) or 0, "rotation"):
        raise LabelStudioImportError(f"region {region.get('id')!r} is rotated: only upright boxes are supported")
    w = _number(region.get("original_width", width), "original_width")
    h = _number(region.get("original_height", height), "original_height")
    x, y = _number(value.get("x"), "x") / 100 * w, _number(value.get("y"), "y") / 100 * h
    bw, bh = _number(value.get("width"), "width") / 100 * w, _number(value.get("height"), "height") / 100 * h
    return events_pb2.Detection(label=str(names[0]), score=float(region.get("score", 0.0) or 0.0),
                                box=events_pb2.Box(x1=x, y1=y, x2=x + bw, y2=y + bh))


def _size(item: dict) -> tuple[int, int]:
    data = item.get("data") or {}
    regions = [r for p in item.get("predictions") or [] for r in p.get("result") or []]
    width = data.get("width") or next((r.get("original_width") for r in regions if r.get("original_width")), None)
    height = data.get("height") or next((r.get("original_height") for r in regions if r.get("original_height")),
                                        None)
    if not width or not height:
        raise LabelStudioImportError("the image's size is unknown: give data.width and data.height, or original_width and "
                           "original_height in the predictions")
    return int(_number(width, "width")), int(_number(height, "height"))


def from_label_studio(items: Sequence[dict], image_key: str = "image") -> list[ImportedTask]:
    """Label Studio tasks (a list, as exported or imported) as tasks to create; LabelStudioImportError names the first task
    that cannot be (by its position) and why."""
    if not isinstance(items, list):
        raise LabelStudioImportError("Label Studio tasks are a JSON list")
    imported = []
    for position, item in enumerate(items):
        try:
            imported.append(_imported(item, image_key))
        except LabelStudioImportError as exc:
            raise LabelStudioImportError(f"task {position}: {exc}") from None
    return imported


def _imported(item: dict, image_key: str) -> ImportedTask:
    if not isinstance(item, dict) or not isinstance(item.get("data"), dict):
        raise LabelStudioImportError("not a Label Studio task (no data object)")
    data = item["data"]
    address = data.get(image_key)
    if not isinstance(address, str) or not address:
        raise LabelStudioImportError(f"data.{image_key} names no image")
    width, height = _size(item)
    predictions = item.get("predictions") or []
    prediction = predictions[0] if predictions else {}
    proposals = [p for p in (_proposal(r, width, height) for r in prediction.get("result") or []) if p is not None]
    model_name, _, model_version = str(prediction.get("model_version") or "").partition("@")
    ref = _ref_of(address)
    task = events_pb2.AnnotationTask(
        task_id=str(data.get("vigil_task_id") or uuid.uuid5(IMPORT_NAMESPACE, address)),
        camera_id=str(data.get("camera_id") or ""), frame_event_id=str(data.get("frame_event_id") or ""),
        reason=IMPORTED_REASON, reason_detail=f"imported from Label Studio ({address})",
        proposals=proposals, model=events_pb2.ModelRef(name=model_name, version=model_version),
        width=width, height=height, state="open",  # labels_wanted left to the queue's double-label share
    )
    if ref is not None:
        if data.get("image_sha256"):
            ref.sha256 = str(data["image_sha256"])
        task.frame.CopyFrom(ref)
    captured = data.get("captured_at")
    if captured:
        try:
            task.captured_at.FromDatetime(datetime.fromisoformat(str(captured).replace("Z", "+00:00")))
        except ValueError:
            raise LabelStudioImportError(f"captured_at is not an ISO 8601 time: {captured!r}") from None
    return ImportedTask(task=task, image_url=None if ref is not None else address)


# --- over the queue ----------------------------------------------------------------------------------------------
class Exports:
    """What the HTTP API's /api/export and /api/import call (web/api.py's LabelExports), over an AnnotationQueue
    (`tasks`, `labels`, `create`) and a schema provider (`current()`). Imported images must already be in the
    annotation bucket (s3://<bucket>/...) unless `fetch_image(url) -> bytes` is given: a server that fetches any
    URL an admin names is a choice to make deliberately, not a default."""

    def __init__(self, queue, schemas, bucket: str | None = None, fetch_image: Callable[[str], bytes] | None = None,
                 max_tasks: int = 1_000_000) -> None:
        self.queue, self.schemas = queue, schemas
        # The annotation bucket: as given, else the queue's task store's.
        self.bucket = bucket or getattr(getattr(queue, "store", None), "bucket", None)
        self.fetch_image = fetch_image
        self.max_tasks = max_tasks

    def _schema(self) -> LabelSchema | None:
        return self.schemas.current() if self.schemas is not None else None

    def _accepted_labels(self, tasks: Iterable[events_pb2.AnnotationTask]) -> list[events_pb2.AnnotationLabel]:
        return [label for task in tasks if task.state == "accepted" for label in self.queue.labels(task.task_id)]

    def coco(self) -> dict:
        labels = self._accepted_labels(self.queue.tasks(state="accepted", limit=self.max_tasks))
        schema = self._schema() or LabelSchema(
            version="unpublished", classes=tuple(sorted({d.label for l in labels for d in l.labels})) or ("object",))
        return to_coco(labels, schema)

    def label_studio(self) -> list[dict]:
        tasks = [t for t in self.queue.tasks(limit=self.max_tasks) if t.width and t.height]
        return to_label_studio(tasks, self._accepted_labels(tasks))

    def import_label_studio(self, items: list[dict]) -> dict:
        """Creates a task per Label Studio task (none when any is refused: LabelStudioImportError names it)."""
        imported = from_label_studio(items)
        for position, item in enumerate(imported):
            if item.image_url is not None and self.fetch_image is None:
                raise LabelStudioImportError(f"task {position}: {item.image_url} is not in the annotation bucket "
                                             f"(s3://{self.bucket}/...): this server does not fetch images")
            if item.image_url is None and self.bucket is not None and item.task.frame.bucket != self.bucket:
                raise LabelStudioImportError(f"task {position}: s3://{item.task.frame.bucket}/"
                                             f"{item.task.frame.key} is not in the annotation bucket {self.bucket}")
        schema = self._schema()
        created = existing = 0
        for item in imported:
            if schema is not None:
                item.task.schema_version = schema.version
            image = self.fetch_image(item.image_url) if item.image_url is not None else None
            if self.queue.create(item.task, image):
                created += 1
            else:
                existing += 1
        return {"created": created, "existing": existing, "task_ids": [i.task.task_id for i in imported]}
