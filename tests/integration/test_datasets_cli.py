"""`vigil datasets` on the real stack, in the exact forms of issue 12: `import DATASET COCO_JSON --images DIR
--message M` (faces blurred by the stack's inference before storage; prints the new version), `log DATASET`,
`diff DATASET@V1 DATASET@V2 --json` (exact), `export DATASET@VERSION --format coco --out DIR` (pycocotools loads
it, counts as `show` gives them), `tag`, `gc`, and every change recorded as a DatasetVersion on vigil.datasets.
An import whose face model cannot be reached names the address and stores nothing."""
from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from cli.annotations import stack_s3_client
from libs.common.faces import FaceBlurrer
from libs.common.topics import DATASETS
from protos import events_pb2
from services.datasets.store import DatasetStore
from tests.dataset_items import jpeg
from tests.integration.kafka_tools import decodable, end_offsets, read_range

pytestmark = pytest.mark.integration

ME = "ci-tester"


def vigil_datasets(stack, *args: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).parent / "vigil"
    return subprocess.run([str(command), "--state-dir", str(stack.paths.state), "datasets", *args],
                          capture_output=True, text=True, timeout=300)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def face_photo() -> bytes:
    from libs.common.cache_dir import default_cache_dir
    from tools.fetch_assets import fetch_opencv_samples

    photo = cv2.imread(str(fetch_opencv_samples(default_cache_dir()) / "messi5.jpg"))
    return cv2.imencode(".jpg", photo)[1].tobytes()


def coco_file(folder: Path, name: str, images: dict[str, tuple[int, int]], boxes: list[tuple[str, str, list]]
              ) -> Path:
    """A COCO file naming `images` (file name -> size) with `boxes` (file name, class, [x, y, w, h])."""
    ids = {file_name: number for number, file_name in enumerate(images, start=1)}
    classes = sorted({c for _, c, _ in boxes})
    document = {"images": [{"id": ids[f], "file_name": f, "width": w, "height": h} for f, (w, h) in images.items()],
                "categories": [{"id": n, "name": c} for n, c in enumerate(classes, start=10)],
                "annotations": [{"id": n, "image_id": ids[f], "category_id": 10 + classes.index(c), "bbox": b,
                                 "iscrowd": 0} for n, (f, c, b) in enumerate(boxes, start=1)]}
    path = folder / name
    path.write_text(json.dumps(document))
    return path


def test_import_log_diff_export_tag_gc_with_their_audit_events(stack, tmp_path):
    dataset = f"cli-{uuid.uuid4().hex[:8]}"
    images = tmp_path / "images"
    images.mkdir()
    photo = face_photo()
    (images / "people.jpg").write_bytes(photo)
    (images / "street.jpg").write_bytes(jpeg(1))
    (images / "empty.jpg").write_bytes(jpeg(2))
    (images / "later.jpg").write_bytes(jpeg(3))
    h, w = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR).shape[:2]
    small = (160, 120)
    first = coco_file(tmp_path, "first.json", {"people.jpg": (w, h), "street.jpg": small, "empty.jpg": small},
                      [("people.jpg", "person", [180, 20, 150, 320]), ("street.jpg", "car", [10, 10, 50, 40])])
    second = coco_file(tmp_path, "second.json", {"people.jpg": (w, h), "street.jpg": small, "later.jpg": small},
                       [("people.jpg", "person", [180, 20, 150, 320]), ("street.jpg", "car", [12, 10, 50, 40]),
                        ("street.jpg", "bicycle", [90, 50, 30, 30]), ("later.jpg", "car", [1, 1, 20, 20])])
    start = end_offsets(stack.config.kafka_bootstrap, DATASETS)

    imported = vigil_datasets(stack, "import", dataset, str(first), "--images", str(images), "--message", "first",
                              "--as", ME)
    v1 = ok(imported).strip()
    assert "vigil: stored 3/3 images" in imported.stderr  # progress, on stderr
    assert re.fullmatch(r"[0-9a-f]{16}", v1)
    store = DatasetStore(stack_s3_client(stack))
    stored = store.get_blob(store.version(dataset, v1).item("people.jpg").blob)
    assert stored != photo, "the face was blurred before the image was stored"
    faces = FaceBlurrer(f"127.0.0.1:{stack.config.ports.grpc}")
    try:
        assert len(faces.faces(photo)) >= 1 and len(faces.faces(stored)) == 0
    finally:
        faces.close()
    v2 = ok(vigil_datasets(stack, "import", dataset, str(second), "--images", str(images), "--message", "second",
                           "--replace", "--as", ME)).strip()
    assert v2 != v1

    log = ok(vigil_datasets(stack, "log", dataset)).splitlines()
    assert [line.split()[0] for line in log[1:]] == [v2, v1]
    assert log[1].split()[-1] == "second" and ME in log[2]

    changes = json.loads(ok(vigil_datasets(stack, "diff", f"{dataset}@{v1}", f"{dataset}@{v2}", "--json")))
    assert (changes["a"], changes["b"]) == (v1, v2)
    assert changes["added"] == ["later.jpg"] and changes["removed"] == ["empty.jpg"]
    assert [r["item_id"] for r in changes["relabelled"]] == ["street.jpg"]
    (relabel,) = changes["relabelled"]
    assert relabel["a"]["labels"] == [{"label": "car", "box": [10.0, 10.0, 60.0, 50.0]}]
    assert relabel["b"]["labels"] == [{"label": "bicycle", "box": [90.0, 50.0, 120.0, 80.0]},
                                      {"label": "car", "box": [12.0, 10.0, 62.0, 50.0]}]
    assert changes["unchanged"] == 1 and not changes["changed"]
    summary = ok(vigil_datasets(stack, "diff", f"{dataset}@{v1}", f"{dataset}@{v2}")).splitlines()
    assert summary[0].endswith("1 added, 1 removed, 1 relabelled, 0 moved split, 0 changed, 1 unchanged")

    out = tmp_path / "export"
    exported = vigil_datasets(stack, "export", f"{dataset}@{v2}", "--format", "coco", "--out", str(out), "--as", ME)
    assert ok(exported).strip() == str(out.resolve()) and "vigil: exported 3/3 images" in exported.stderr
    shown = json.loads(ok(vigil_datasets(stack, "show", f"{dataset}@{v2}", "--json")))
    coco = COCO(str(out / "annotations.json"))
    assert len(coco.getImgIds()) == shown["items"] == 3
    assert len(coco.getAnnIds()) == shown["boxes"] == sum(shown["statistics"]["boxes_per_class"].values()) == 4
    assert {image["vigil_item_id"] for image in coco.loadImgs(coco.getImgIds())} == {
        "people.jpg", "street.jpg", "later.jpg"}
    assert all((out / image["file_name"]).is_file() for image in coco.loadImgs(coco.getImgIds()))

    assert ok(vigil_datasets(stack, "tag", dataset, "first", v1, "--as", ME)).strip() == \
        f"{dataset}@{v1} tagged first"
    assert vigil_datasets(stack, "tag", dataset, "first", v2).returncode == 2  # a tag never moves
    assert f"{dataset}@{v1}" in ok(vigil_datasets(stack, "show", f"{dataset}@first"))
    assert dataset in ok(vigil_datasets(stack, "list"))
    assert ok(vigil_datasets(stack, "gc", "--grace", "24", "--as", ME)).startswith("deleted 0 blobs")

    end = end_offsets(stack.config.kafka_bootstrap, DATASETS)
    events = decodable(events_pb2.DatasetVersion, read_range(stack.config.kafka_bootstrap, DATASETS, start, end))
    mine = [(e.action, e.version) for e in events if e.dataset == dataset]
    assert mine == [("commit", v1), ("import", v1), ("commit", v2), ("import", v2), ("export", v2), ("tag", v1)]
    by_action = {e.action: e for e in events if e.dataset == dataset and e.version == v2}
    assert all(e.actor == ME for e in events if e.dataset == dataset)
    assert by_action["commit"].message == "second" and by_action["commit"].parent_versions == [v1]
    assert by_action["commit"].statistics["boxes"] == 4 and by_action["commit"].statistics["class.car"] == 2
    assert by_action["commit"].manifest.key == f"versions/{dataset}/{v2}.json"
    assert by_action["export"].message == f"exported as coco to {out.resolve()}"
    assert "faces blurred" in by_action["import"].message
    (gc,) = [e for e in events if e.action == "gc" and e.actor == ME]
    assert gc.message.startswith("deleted 0 blobs") and "live_versions" in gc.statistics


def test_an_import_whose_face_model_cannot_be_reached_names_it_and_stores_nothing(stack, tmp_path):
    dataset = f"cli-{uuid.uuid4().hex[:8]}"
    (tmp_path / "a.jpg").write_bytes(jpeg(9))
    path = coco_file(tmp_path, "a.json", {"a.jpg": (160, 120)}, [])
    result = vigil_datasets(stack, "import", dataset, str(path), "--images", str(tmp_path), "--inference",
                            "127.0.0.1:9")
    assert result.returncode == 2 and result.stdout == ""
    assert "127.0.0.1:9" in result.stderr and "--no-blur-faces" in result.stderr
    assert vigil_datasets(stack, "log", dataset).returncode == 2  # no version, no branch
    v1 = ok(vigil_datasets(stack, "import", dataset, str(path), "--images", str(tmp_path), "--no-blur-faces")).strip()
    assert len(ok(vigil_datasets(stack, "log", dataset)).splitlines()) == 2
    # Label Studio's JSON export (a list: told from COCO by its shape), its final annotation per task.
    region = {"type": "rectanglelabels", "original_width": 160, "original_height": 120,
              "value": {"x": 50, "y": 50, "width": 25, "height": 25, "rectanglelabels": ["dog"]}}
    (tmp_path / "studio.json").write_text(json.dumps([
        {"id": 4, "data": {"image": "/data/upload/1/a.jpg"}, "annotations": [{"result": [region]}]}]))
    v2 = ok(vigil_datasets(stack, "import", dataset, str(tmp_path / "studio.json"), "--images", str(tmp_path),
                           "--no-blur-faces")).strip()
    changes = json.loads(ok(vigil_datasets(stack, "diff", f"{dataset}@{v1}", f"{dataset}@{v2}", "--json")))
    (added,) = changes["added"]
    assert json.loads(ok(vigil_datasets(stack, "show", f"{dataset}@{v2}", "--json")))["statistics"][
        "boxes_per_class"] == {"dog": 1}
