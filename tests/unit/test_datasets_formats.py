"""The pure parts of the dataset formats: a version as a COCO document (categories from the schema, then classes in
use; bbox as x, y, width, height; splits as a field), YOLO label lines, file extensions from image bytes, and the
CLI's DATASET@REF."""
from __future__ import annotations

import pytest

from cli.datasets import BadInput, dataset_ref
from services.datasets.formats import categories, coco_document, image_extension, yolo_lines
from services.datasets.manifest import build_manifest
from tests.dataset_items import item, jpeg


def version():
    return build_manifest("lobby", [item("a", ("person", 10, 20, 50, 120), ("car", 300, 200, 620, 470), split="val"),
                                    item("b", split="test")], message="m", author="ann")


def test_categories_are_the_schemas_then_the_classes_in_use_it_lacks():
    assert categories(version()) == ["car", "person"]
    assert categories(version(), ("bicycle", "person")) == ["bicycle", "person", "car"]


def test_a_version_as_a_coco_document():
    m = version()
    doc = coco_document(m, {i.blob: ".jpg" for i in m.items}, ("person", "car"))
    assert [c["name"] for c in doc["categories"]] == ["person", "car"] and doc["categories"][0]["id"] == 1
    first = doc["images"][0]
    assert first["file_name"] == m.item("a").blob + ".jpg" and first["split"] == "val"
    assert (first["vigil_item_id"], first["width"], first["height"]) == ("a", 640, 480)
    assert doc["images"][1]["verdict"] == "nothing_to_label"
    assert sorted((a["category_id"], a["bbox"], a["area"], a["iscrowd"]) for a in doc["annotations"]) == [
        (1, [10, 20, 40, 100], 4000, 0), (2, [300, 200, 320, 270], 320 * 270, 0)]
    assert doc["info"]["version"] == m.version


def test_yolo_lines_are_centre_and_size_normalised_to_the_image():
    assert yolo_lines(item("a", ("person", 64, 48, 192, 432)), {"person": 3}) == [
        "3 0.200000 0.500000 0.200000 0.800000"]


def test_file_extensions_come_from_the_image_bytes():
    assert image_extension(jpeg(1)) == ".jpg"
    assert image_extension(b"\x89PNG\r\n\x1a\n....") == ".png"
    assert image_extension(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == ".webp"
    assert image_extension(b"hello") == ".bin"


def test_dataset_and_ref_are_read_from_dataset_at_ref():
    assert dataset_ref("lobby") == ("lobby", "main")
    assert dataset_ref("lobby@0123456789abcdef") == ("lobby", "0123456789abcdef")
    assert dataset_ref("lobby@v1", "x") == ("lobby", "v1")
    with pytest.raises(BadInput):
        dataset_ref("no/such@v1")


def test_import_reads_images_from_the_folder_given_and_nowhere_else(tmp_path):
    from services.datasets.formats import _find

    (tmp_path / "sub").mkdir()
    for name in ("sub/b.jpg", "b.jpg", "c.jpg"):
        (tmp_path / name).write_bytes(b"x")
    outside = tmp_path.parent / f"outside-{tmp_path.name}.jpg"
    outside.write_bytes(b"secret")
    assert _find(tmp_path, "sub/b.jpg") == tmp_path / "sub" / "b.jpg"
    assert _find(tmp_path, "http://images.example.org/val/c.jpg") == tmp_path / "c.jpg"
    assert _find(tmp_path, str(outside)) is None           # an absolute path: by its base name, in the folder
    assert _find(tmp_path, f"../{outside.name}") is None
    assert _find(tmp_path, "") is None
