"""Exports read by readers nobody here wrote: pycocotools loads the COCO file (counts and boxes match), and Label
Studio's task JSON (as its docs give it) goes out and comes back as the same tasks."""
from __future__ import annotations

import json

import pytest
from pycocotools.coco import COCO

from services.annotation.exports import (
    LabelStudioImportError, Exports, from_label_studio, label_studio_config, latest_accepted, to_coco,
    to_label_studio)
from services.annotation.schemas import default_schema
from tests.annotation_events import LABELS, det, label, task

SCHEMA = default_schema(["person", "bicycle", "car"], site_classes=["forklift"], version="2")


def test_the_latest_accepted_label_of_each_task_is_kept():
    kept = latest_accepted(LABELS)
    assert sorted(kept) == ["t1", "t2"]
    assert len(kept["t1"].labels) == 2 and kept["t1"].kind == "review"


def test_pycocotools_loads_the_coco_export_with_its_counts_and_boxes(tmp_path):
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(to_coco(LABELS, SCHEMA)))
    coco = COCO(str(path))
    assert len(coco.getImgIds()) == 2          # t1 and the negative t2; not the rejected t3 nor the pending t4
    assert len(coco.getAnnIds()) == 2
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["person", "bicycle", "car", "forklift"]
    by_task = {image["vigil_task_id"]: image for image in coco.loadImgs(coco.getImgIds())}
    first, negative = by_task["t1"], by_task["t2"]
    assert (first["file_name"], first["width"], first["height"]) == ("images/t1.jpg", 640, 480)
    assert coco.getAnnIds(imgIds=[negative["id"]]) == []
    boxes = {coco.loadCats(a["category_id"])[0]["name"]: a for a in coco.loadAnns(coco.getAnnIds(imgIds=[first["id"]]))}
    assert boxes["person"]["bbox"] == pytest.approx([12, 20, 40, 101.5])
    assert boxes["person"]["area"] == pytest.approx(40 * 101.5)
    assert boxes["forklift"]["bbox"] == pytest.approx([300, 200, 320, 270])
    assert all(a["iscrowd"] == 0 for a in boxes.values())
    assert coco.getImgIds(catIds=coco.getCatIds(catNms=["forklift"])) == [first["id"]]


def test_a_class_the_schema_lacks_is_exported_not_dropped():
    older = [label("t9", "accepted", [det("trolley", 0, 0, 10, 10)])]
    exported = to_coco(older, SCHEMA)
    assert exported["categories"][-1] == {"id": 5, "name": "trolley", "supercategory": "unlisted"}
    assert exported["annotations"][0]["category_id"] == 5


def test_label_studio_tasks_carry_proposals_as_predictions_in_percent_and_accepted_labels_as_annotations():
    tasks = [task("t1", [det("person", 64, 48, 128, 96, score=0.41)]), task("t2"), task("t4")]
    exported = to_label_studio(tasks, LABELS)
    first = exported[0]
    assert first["data"]["image"] == "s3://vigil-annotation/images/t1.jpg"
    (prediction,) = first["predictions"]
    assert (prediction["model_version"], prediction["score"]) == ("yolov3-tiny@1", pytest.approx(0.41))
    (region,) = prediction["result"]
    assert (region["type"], region["from_name"], region["to_name"]) == ("rectanglelabels", "label", "image")
    assert (region["original_width"], region["original_height"]) == (640, 480)
    assert region["value"] == {"x": 10.0, "y": 10.0, "width": 10.0, "height": 10.0, "rotation": 0,
                               "rectanglelabels": ["person"]}
    assert region["score"] == pytest.approx(0.41)
    assert [r["value"]["rectanglelabels"] for r in first["annotations"][0]["result"]] == [["person"], ["forklift"]]
    assert exported[1]["annotations"][0]["result"] == []    # nothing to label: an empty answer
    assert "annotations" not in exported[2] and "predictions" not in exported[1]
    assert '<Label value="forklift"/>' in label_studio_config(SCHEMA)


def test_label_studio_round_trip_gives_back_the_same_tasks():
    tasks = [task("t1", [det("person", 64.5, 48, 128, 96.25, score=0.41), det("car", 0, 0, 640, 480, score=0.3)]),
             task("t2")]
    back = from_label_studio(json.loads(json.dumps(to_label_studio(tasks))))
    assert [b.task.task_id for b in back] == ["t1", "t2"]
    for original, imported in zip(tasks, back):
        assert imported.image_url is None
        assert imported.task.frame == original.frame
        assert (imported.task.width, imported.task.height) == (640, 480)
        assert (imported.task.camera_id, imported.task.frame_event_id) == ("lobby", original.frame_event_id)
        assert imported.task.captured_at == original.captured_at
        assert imported.task.reason == "imported"
        assert len(imported.task.proposals) == len(original.proposals)
        for a, b in zip(original.proposals, imported.task.proposals):
            assert a.label == b.label and b.score == pytest.approx(a.score)
            assert [b.box.x1, b.box.y1, b.box.x2, b.box.y2] == pytest.approx([a.box.x1, a.box.y1, a.box.x2, a.box.y2],
                                                                             abs=1e-3)
    assert back[0].task.model == tasks[0].model


def test_a_foreign_label_studio_task_imports_with_its_url_and_a_stable_id():
    # The shape of Label Studio's documented pre-annotation example: an http image, a per-region size.
    foreign = [{"data": {"image": "https://example.com/opensource/label-studio/1.jpg"},
                "predictions": [{"model_version": "model 1", "result": [{
                    "from_name": "tag", "id": "t5sp3TyXPo", "source": "$image", "to_name": "img",
                    "type": "rectanglelabels", "original_width": 1000, "original_height": 500,
                    "value": {"height": 20, "rectanglelabels": ["Moonwalker"], "rotation": 0, "width": 39.6,
                              "x": 13.2, "y": 34.7}}]}]}]
    (first,) = from_label_studio(foreign)
    (again,) = from_label_studio(foreign)
    assert first.task.task_id == again.task.task_id
    assert first.image_url == "https://example.com/opensource/label-studio/1.jpg"
    assert not first.task.HasField("frame")
    (proposal,) = first.task.proposals
    assert proposal.label == "Moonwalker"
    assert [proposal.box.x1, proposal.box.y1, proposal.box.x2, proposal.box.y2] == pytest.approx(
        [132, 173.5, 528, 273.5])
    assert first.task.model.name == "model 1"


@pytest.mark.parametrize("item, problem", [
    ({"data": {}}, "names no image"),
    ({"data": {"image": "s3://b/k.jpg"}}, "size is unknown"),
    ({"data": {"image": "s3://b/k.jpg", "width": 10, "height": 10}, "predictions": [{"result": [
        {"type": "rectanglelabels", "value": {"x": 1, "y": 1, "width": 1, "height": 1, "rotation": 30,
                                              "rectanglelabels": ["a"]}}]}]}, "rotated"),
    ({"data": {"image": "s3://b/k.jpg", "width": 10, "height": 10}, "predictions": [{"result": [
        {"type": "rectanglelabels", "value": {"x": "1", "y": 1, "width": 1, "height": 1,
                                              "rectanglelabels": ["a"]}}]}]}, "x is not a number"),
    ({"data": {"image": "s3://bucket-only", "width": 10, "height": 10}}, "not an s3://bucket/key"),
])
def test_a_task_that_cannot_be_imported_is_named_with_why(item, problem):
    with pytest.raises(LabelStudioImportError, match=f"task 1: .*{problem}"):
        from_label_studio([{"data": {"image": "s3://b/ok.jpg", "width": 5, "height": 5}}, item])


class Queue:
    """The part of AnnotationQueue the exports use, over a dict."""

    def __init__(self, tasks=(), labels=()):
        self.held = {t.task_id: t for t in tasks}
        self.label_events = list(labels)
        self.images: dict[str, bytes | None] = {}

    def tasks(self, state=None, limit=100):
        return [t for t in self.held.values() if state is None or t.state == state][:limit]

    def labels(self, task_id):
        return [l for l in self.label_events if l.task_id == task_id]

    def create(self, task, image=None):
        if task.task_id in self.held:
            return False
        self.held[task.task_id], self.images[task.task_id] = task, image
        return True


class Schemas:
    def current(self):
        return SCHEMA


def test_queue_exports_serve_the_api_export_from_the_queues_tasks_and_labels():
    queue = Queue([task("t1", state="accepted"), task("t2", state="accepted"), task("t4", state="submitted")], LABELS)
    exports = Exports(queue, Schemas(), "vigil-annotation")
    coco = exports.coco()
    assert sorted(i["vigil_task_id"] for i in coco["images"]) == ["t1", "t2"] and len(coco["annotations"]) == 2
    assert [c["name"] for c in coco["categories"]] == list(SCHEMA.classes)
    studio = exports.label_studio()
    assert [("annotations" in item) for item in studio] == [True, True, False]


def test_queue_exports_import_creates_each_task_once_under_the_current_schema():
    queue = Queue()
    exports = Exports(queue, Schemas(), "vigil-annotation")
    items = to_label_studio([task("t1", [det("person", 64, 48, 128, 96, score=0.41)]), task("t2")])
    assert exports.import_label_studio(items) == {"created": 2, "existing": 0, "task_ids": ["t1", "t2"]}
    assert exports.import_label_studio(items)["existing"] == 2
    assert queue.held["t1"].schema_version == SCHEMA.version and queue.images["t1"] is None
    assert len(queue.held["t1"].proposals) == 1 and queue.held["t1"].labels_wanted == 0  # the queue's share decides


def test_queue_exports_import_refuses_images_it_would_have_to_fetch_or_another_buckets():
    queue = Queue()
    web = [{"data": {"image": "https://example.com/a.jpg", "width": 10, "height": 10}}]
    with pytest.raises(LabelStudioImportError, match="task 0: https://example.com/a.jpg is not in the annotation"):
        Exports(queue, Schemas(), "vigil-annotation").import_label_studio(web)
    with pytest.raises(LabelStudioImportError, match="not in the annotation bucket vigil-annotation"):
        Exports(queue, Schemas(), "vigil-annotation").import_label_studio(
            [{"data": {"image": "s3://elsewhere/a.jpg", "width": 10, "height": 10}}])
    assert queue.held == {}
    fetched = Exports(queue, Schemas(), "vigil-annotation", fetch_image=lambda url: b"jpeg of " + url.encode())
    assert fetched.import_label_studio(web)["created"] == 1
    assert list(queue.images.values()) == [b"jpeg of https://example.com/a.jpg"]


def test_the_annotation_bucket_defaults_to_the_queues_task_store():
    queue = Queue()
    queue.store = type("Store", (), {"bucket": "site-annotation"})()
    assert Exports(queue, Schemas()).bucket == "site-annotation"
    assert Exports(queue, Schemas(), "given").bucket == "given"
