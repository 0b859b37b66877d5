"""Dataset versions out to COCO and YOLO and labelled images in from COCO and Label Studio, on a real SeaweedFS S3
(started for this module alone): pycocotools loads an export whose item and box counts match the version's
statistics; a COCO file imported, committed and exported again gives the same boxes and classes; the YOLO layout
line by line for a known item; Label Studio's final annotations become items; an import with a missing image or a
wrong size names every problem and stores nothing."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
import yaml
from pycocotools.coco import COCO

from libs.common.objectstore import ensure_bucket
from services.datasets.formats import (ANNOTATIONS_FILE, ImportRefused, export_coco, export_yolo, import_coco,
                                       import_label_studio)
from services.datasets.store import DatasetStore
from tests.dataset_items import T0, item, jpeg
from tests.integration.infrastructure import object_store

pytestmark = pytest.mark.integration

BUCKET = "vigil-datasets"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("datasets-formats")) as client:
        ensure_bucket(client, BUCKET)
        yield client


@pytest.fixture
def store(s3) -> DatasetStore:
    return DatasetStore(s3, BUCKET)


@pytest.fixture
def dataset() -> str:
    return f"ds-{uuid.uuid4().hex[:8]}"


def stored_item(store, item_id, *labels, seed=0, **fields):
    image = jpeg(seed)
    return item(item_id, *labels, blob=store.put_blob(image), size=len(image), width=160, height=120, **fields)


def write_coco(folder: Path) -> tuple[Path, Path]:
    """A COCO file of three images (one negative, one crowd region) as a labelling tool would write it."""
    images = folder / "images"
    (images / "sub").mkdir(parents=True)
    for name, seed in (("a.jpg", 11), ("sub/b.jpg", 12), ("c.jpg", 13)):
        (images / name).write_bytes(jpeg(seed))
    coco = {
        "images": [{"id": 1, "file_name": "a.jpg", "width": 160, "height": 120},
                   {"id": 2, "file_name": "sub/b.jpg", "width": 160, "height": 120,
                    "date_captured": "2025-11-29 08:03:00"},
                   {"id": 7, "file_name": "c.jpg", "width": 160, "height": 120}],
        "categories": [{"id": 3, "name": "person"}, {"id": 9, "name": "car"}, {"id": 4, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10.5, 20.25, 30.0, 40.0], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [100.1, 50.2, 59.9, 60.3], "iscrowd": 0},
            {"id": 3, "image_id": 2, "category_id": 9, "bbox": [0.0, 0.0, 12.3, 4.56], "iscrowd": 0},
            {"id": 4, "image_id": 2, "category_id": 3, "bbox": [5, 5, 50, 50], "iscrowd": 1},
        ],
    }
    path = folder / "coco.json"
    path.write_text(json.dumps(coco))
    return path, images


def boxes_by_file(coco: COCO, key: str) -> dict[str, list[tuple[str, list[float]]]]:
    found = {}
    for image in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
        found[image[key]] = sorted((coco.loadCats(a["category_id"])[0]["name"], a["bbox"]) for a in anns)
    return found


def test_a_coco_export_loads_in_pycocotools_with_the_versions_counts(store, dataset, tmp_path):
    version = store.commit(dataset, [
        stored_item(store, "a", ("person", 1, 1, 40, 80), ("car", 50, 10, 150, 100), seed=1, camera_id="cam-1"),
        stored_item(store, "b", ("person", 3, 4, 20, 30), seed=2, camera_id="cam-2", split="val"),
        stored_item(store, "c", seed=3, camera_id="cam-2", split="test"),
        stored_item(store, "d", ("car", 0, 0, 160, 120), seed=1, camera_id="cam-1", captured_at=T0 + 5)],
        "four", "ann")
    report = export_coco(store, version, tmp_path / "out", schema_classes=("bicycle", "person", "car"))
    coco = COCO(str(tmp_path / "out" / ANNOTATIONS_FILE))
    images = coco.loadImgs(coco.getImgIds())
    assert len(images) == version.statistics["items"] == report.items == 4
    assert len(coco.getAnnIds()) == sum(version.statistics["boxes_per_class"].values()) == report.boxes
    for name, count in version.statistics["boxes_per_class"].items():
        assert len(coco.getAnnIds(catIds=coco.getCatIds(catNms=[name]))) == count
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["bicycle", "person", "car"]
    by_item = {image["vigil_item_id"]: image for image in images}
    assert {i: image["split"] for i, image in by_item.items()} == {i.item_id: i.split for i in version.items}
    assert by_item["a"]["file_name"] == version.item("a").blob + ".jpg" == by_item["d"]["file_name"]
    assert report.images_written == 3  # "a" and "d" share an image: one file
    assert all((tmp_path / "out" / image["file_name"]).read_bytes() == store.get_blob(image["file_name"][:64])
               for image in images)
    (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=[by_item["b"]["id"]]))
    assert ann["bbox"] == [3, 4, 17, 26] and ann["area"] == 17 * 26 and ann["iscrowd"] == 0
    again = export_coco(store, version, tmp_path / "out")
    assert again.images_written == 0


def test_a_coco_file_imported_then_exported_gives_the_same_boxes_and_classes(store, dataset, tmp_path):
    path, images = write_coco(tmp_path / "in")
    result = import_coco(store, json.loads(path.read_text()), images, blurrer=None)
    assert result.crowd_regions_left_out == 1 and result.boxes == 3 and result.images_stored == 3
    version = store.commit(dataset, result.items, "imported", "ann")
    assert sorted(i.item_id for i in version.items) == ["a.jpg", "c.jpg", "sub/b.jpg"]
    assert version.item("c.jpg").verdict == "nothing_to_label"
    assert version.item("a.jpg").blob == store.put_blob(jpeg(11))  # no blurrer: the bytes as given
    export_coco(store, version, tmp_path / "out")
    original, exported = COCO(str(path)), COCO(str(tmp_path / "out" / ANNOTATIONS_FILE))
    before = boxes_by_file(original, "file_name")
    before["sub/b.jpg"] = [b for b in before["sub/b.jpg"] if b[0] != "person"]  # the crowd region
    after = boxes_by_file(exported, "vigil_item_id")
    assert after.keys() == before.keys()
    for name in before:
        assert [n for n, _ in after[name]] == [n for n, _ in before[name]]
        for (_, a), (_, b) in zip(after[name], before[name]):
            assert a == pytest.approx(b, abs=1e-6)
    # The export imported again is the same items: ids, images, boxes and splits kept.
    again = import_coco(store, json.loads((tmp_path / "out" / ANNOTATIONS_FILE).read_text()), tmp_path / "out",
                        blurrer=None)
    assert sorted(again.items, key=lambda i: i.item_id) == list(version.items)


def test_the_yolo_layout_of_a_known_item_line_by_line(store, dataset, tmp_path):
    version = store.commit(dataset, [
        stored_item(store, "k", ("person", 16, 12, 48, 60), ("car", 80, 0, 160, 120), seed=5, split="val"),
        stored_item(store, "n", seed=6, split="train")], "yolo", "ann")
    export_yolo(store, version, tmp_path / "y")
    known = version.item("k")
    assert (tmp_path / "y" / "images" / "val" / f"{known.blob}.jpg").read_bytes() == jpeg(5)
    lines = (tmp_path / "y" / "labels" / "val" / f"{known.blob}.txt").read_text().splitlines()
    # classes sorted (no schema): car 0, person 1; boxes in the item's canonical order (car first)
    assert lines == ["0 0.750000 0.500000 0.500000 1.000000", "1 0.200000 0.300000 0.200000 0.400000"]
    negative = version.item("n")
    assert (tmp_path / "y" / "labels" / "train" / f"{negative.blob}.txt").read_text() == ""
    data = yaml.safe_load((tmp_path / "y" / "data.yaml").read_text())
    assert data == {"train": "images/train", "val": "images/val", "test": "images/test", "nc": 2,
                    "names": {0: "car", 1: "person"}}
    assert (tmp_path / "y" / "images" / "test").is_dir()


def test_label_studio_final_annotations_become_items(store, dataset, tmp_path):
    images = tmp_path / "ls"
    images.mkdir()
    (images / "frame-1.jpg").write_bytes(jpeg(21))
    (images / "frame-2.jpg").write_bytes(jpeg(22))
    region = {"type": "rectanglelabels", "from_name": "label", "to_name": "image", "original_width": 160,
              "original_height": 120, "value": {"x": 10, "y": 25, "width": 50, "height": 50, "rotation": 0,
                                                "rectanglelabels": ["person"]}}
    tasks = [
        {"id": 1, "data": {"image": "/data/upload/3/frame-1.jpg", "vigil_task_id": "t-1", "camera_id": "gate",
                           "captured_at": "2025-11-29T08:00:05Z"},
         "annotations": [{"result": [], "was_cancelled": False},
                         {"result": [region], "was_cancelled": False},
                         {"result": [], "was_cancelled": True}]},
        {"id": 2, "data": {"image": "/data/local-files/?d=frame-2.jpg"}, "annotations": [{"result": []}]},
        {"id": 3, "data": {"image": "/data/upload/3/frame-3.jpg"}},
    ]
    result = import_label_studio(store, tasks, images, blurrer=None)
    assert result.left_out == ["task 2 (id 3): no annotation"]
    by_id = {i.item_id: i for i in result.items}
    first = by_id["t-1"]
    assert [(l.label, l.box) for l in first.labels] == [("person", (16.0, 30.0, 96.0, 90.0))]
    assert (first.camera_id, first.captured_at, first.source_task_ids) == ("gate", T0 + 5, ("t-1",))
    (second,) = [i for i in result.items if i.item_id != "t-1"]
    assert second.verdict == "nothing_to_label" and second.split in ("train", "val", "test")
    version = store.commit(dataset, result.items, "from label studio", "ann")
    assert version.statistics["boxes_per_class"] == {"person": 1}
    assert import_label_studio(store, tasks, images, blurrer=None).items[1].item_id == second.item_id


def test_an_import_names_every_problem_and_stores_nothing(store, s3, tmp_path):
    path, images = write_coco(tmp_path / "in")
    coco = json.loads(path.read_text())
    coco["images"][0]["width"] = 640
    coco["images"].append({"id": 8, "file_name": "missing.jpg", "width": 10, "height": 10})
    coco["annotations"].append({"id": 9, "image_id": 7, "category_id": 77, "bbox": [1, 1, 2, 2]})
    blobs_before = sum(1 for _ in store.stored_blobs())
    with pytest.raises(ImportRefused) as refused:
        import_coco(store, coco, images, blurrer=None)
    problems = refused.value.problems
    assert any("a.jpg" in p and "160x120" in p and "640x120" in p for p in problems)
    assert any("missing.jpg" in p and "not found" in p for p in problems)
    assert any("category 77" in p for p in problems)
    assert sum(1 for _ in store.stored_blobs()) == blobs_before
