"""`vigil annotations` on the real stack: tasks put on the compacted vigil.annotation.tasks and label events on
vigil.annotations as the queue publishes them, then `export` (COCO loaded by pycocotools, Label Studio JSON on
standard output), `status`, `list`, and `users add|list|remove` against the stack's S3 (the token it prints signs
in)."""
from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from pycocotools.coco import COCO

from cli.annotations import stack_s3_client
from libs.common.objectstore import ensure_bucket
from libs.common.topics import ANNOTATION_LABELS, ANNOTATION_TASKS
from services.annotation.schemas import LabelSchema, SchemaStore
from services.annotation.web.users import UserStore
from tests.annotation_events import BUCKET, det, label, task
from tests.integration.kafka_tools import produce

pytestmark = pytest.mark.integration


def vigil_annotations(stack, *args: str) -> subprocess.CompletedProcess:
    command = Path(sys.executable).parent / "vigil"
    return subprocess.run([str(command), "--state-dir", str(stack.paths.state), "annotations", *args],
                          capture_output=True, text=True, timeout=180)


@pytest.fixture(scope="module")
def s3(stack):
    client = stack_s3_client(stack)
    ensure_bucket(client, BUCKET)
    return client


@pytest.fixture(scope="module")
def published(stack):
    """Tasks of a camera of this test's own: one accepted with two boxes (after a first acceptance a reviewer
    replaced), one accepted as nothing to label, one rejected with the model's proposals, one without an image size.
    All settled: a service following the stack's queue must never lease these tasks, whose images do not exist."""
    run = uuid.uuid4().hex[:8]
    camera = f"cli-{run}"
    ids = {name: f"{run}-{name}" for name in ("boxes", "empty", "proposed", "sizeless")}
    tasks = [task(ids["boxes"], state="accepted", camera_id=camera),
             task(ids["empty"], state="accepted", camera_id=camera),
             task(ids["proposed"], [det("person", 64, 48, 128, 96, score=0.41)], state="rejected",
                  camera_id=camera, priority=0.8),
             task(ids["sizeless"], state="rejected", camera_id=camera, width=0, height=0)]
    labels = [label(ids["boxes"], "accepted", [det("person", 10, 20, 50, 120)]),
              label(ids["boxes"], "accepted", [det("person", 12, 20, 52, 121.5), det("car", 300, 200, 620, 470)],
                    kind="review"),
              label(ids["empty"], "accepted", [], verdict="nothing_to_label")]
    bootstrap = stack.config.kafka_bootstrap
    produce(bootstrap, ANNOTATION_TASKS, [(t.task_id.encode(), t.SerializeToString()) for t in tasks])
    produce(bootstrap, ANNOTATION_LABELS, [(l.task_id.encode(), l.SerializeToString()) for l in labels])
    return camera, ids


def test_export_coco_to_a_file_is_loaded_by_pycocotools_with_the_boxes_published(stack, s3, published, tmp_path):
    _camera, ids = published
    SchemaStore(s3, BUCKET).publish(LabelSchema(version=f"cli-{ids['boxes']}", classes=("person", "bicycle", "car")),
                                    make_current=False)
    out = tmp_path / "coco.json"
    result = vigil_annotations(stack, "export", "--format", "coco", "--out", str(out), "--schema",
                               f"cli-{ids['boxes']}")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    coco = COCO(str(out))
    mine = {image["vigil_task_id"]: image for image in coco.loadImgs(coco.getImgIds())
            if image["vigil_task_id"] in ids.values()}
    assert set(mine) == {ids["boxes"], ids["empty"]}        # the others have no accepted label
    assert coco.getAnnIds(imgIds=[mine[ids["empty"]]["id"]]) == []
    anns = coco.loadAnns(coco.getAnnIds(imgIds=[mine[ids["boxes"]]["id"]]))
    boxes = {coco.loadCats(a["category_id"])[0]["name"]: a["bbox"] for a in anns}
    assert set(boxes) == {"person", "car"}
    assert boxes["person"] == pytest.approx([12, 20, 40, 101.5])
    assert boxes["car"] == pytest.approx([300, 200, 320, 270])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())][:3] == ["person", "bicycle", "car"]
    assert mine[ids["boxes"]]["file_name"] == f"images/{ids['boxes']}.jpg"


def test_export_label_studio_writes_standard_output(stack, published):
    _camera, ids = published
    result = vigil_annotations(stack, "export", "--format", "label-studio")
    assert result.returncode == 0, result.stderr
    exported = {item["data"]["vigil_task_id"]: item for item in json.loads(result.stdout)
                if item["data"].get("vigil_task_id") in ids.values()}
    assert set(exported) == set(ids.values()) - {ids["sizeless"]}
    assert "tasks without an image size left out" in result.stderr
    proposed = exported[ids["proposed"]]
    assert proposed["data"]["image"] == f"s3://{BUCKET}/images/{ids['proposed']}.jpg"
    region = proposed["predictions"][0]["result"][0]
    assert region["value"]["x"] == pytest.approx(10.0) and region["value"]["rectanglelabels"] == ["person"]
    assert len(exported[ids["boxes"]]["annotations"][0]["result"]) == 2
    assert exported[ids["empty"]]["annotations"][0]["result"] == []


def test_status_and_list_read_the_tasks_and_labels(stack, published):
    camera, ids = published
    result = vigil_annotations(stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["by_state"]["accepted"] >= 2 and summary["by_state"]["rejected"] >= 2
    assert summary["accepted_tasks"] >= 2
    result = vigil_annotations(stack, "list", "--camera", camera, "--json")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert {r["task_id"] for r in rows} == set(ids.values())
    assert next(r for r in rows if r["task_id"] == ids["boxes"])["accepted"]["boxes"] == 2
    table = vigil_annotations(stack, "list", "--camera", camera)
    assert table.returncode == 0 and ids["proposed"] in table.stdout


def test_users_add_prints_a_token_that_signs_in_list_shows_them_and_remove_ends_it(stack, s3):
    name = f"ana-{uuid.uuid4().hex[:6]}"
    added = vigil_annotations(stack, "users", "add", name, "--role", "reviewer", "--by", "tester")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) >= 40 and token not in added.stderr
    signed_in = UserStore(s3, BUCKET).verify(token)
    assert (signed_in.name, signed_in.role) == (name, "reviewer")
    again = vigil_annotations(stack, "users", "add", name, "--role", "admin")
    assert again.returncode == 2 and "exists" in again.stderr
    listed = vigil_annotations(stack, "users", "list", "--json")
    assert listed.returncode == 0 and token not in listed.stdout
    assert {"name": name, "role": "reviewer", "created_by": "tester"}.items() <= next(
        json.loads(line) for line in listed.stdout.splitlines() if json.loads(line)["name"] == name).items()
    removed = vigil_annotations(stack, "users", "remove", name)
    assert removed.returncode == 0, removed.stderr
    assert UserStore(s3, BUCKET).verify(token) is None
    assert vigil_annotations(stack, "users", "remove", name).returncode == 1
