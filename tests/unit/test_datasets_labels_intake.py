"""The accepted label -> dataset item mapping of the datasets service (services/datasets/labels_intake.py): task id
as item id and source, camera, capture time, boxes in pixels, verdict and schema version carried over, the split
of the item's group; labels that can never be items named with the dead letter's reason."""
from __future__ import annotations

from protos import events_pb2
from services.datasets.labels_intake import (CommitPolicy, commit_due, commit_message, event_seconds,
                                             item_from_label, label_problem)
from services.datasets.manifest import Item, Label
from services.datasets.splits import assign_split, group_key
from services.datasets.validation import item_problems

SHA = "ab" * 32


def accepted(task_id="task-1", verdict="labelled", boxes=(("person", 10, 20, 110, 220),), **fields):
    label = events_pb2.AnnotationLabel(
        task_id=task_id, label_id=f"{task_id}-label", status="accepted", kind="submission", verdict=verdict,
        camera_id=fields.pop("camera_id", "lobby"), width=640, height=480, schema_version="3",
        frame=events_pb2.ObjectRef(bucket="vigil-annotation", key=f"images/{SHA}.jpg", sha256=SHA), **fields)
    for name, x1, y1, x2, y2 in boxes:
        label.labels.add(label=name, score=1.0, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    label.captured_at.FromSeconds(1_764_400_000)
    label.envelope.event_time.FromNanoseconds(1_764_400_100_500_000_000)
    return label


def test_an_accepted_label_becomes_an_item_named_by_its_task_with_its_boxes_in_pixels():
    label = accepted(boxes=(("person", 10, 20, 110, 220), ("car", 300.5, 100, 420, 200)))
    item = item_from_label(label, SHA, 12_345)

    assert item == Item(item_id="task-1", blob=SHA, size=12_345, width=640, height=480, camera_id="lobby",
                        captured_at=1_764_400_000.0, split=item.split, source_task_ids=("task-1",),
                        labels=(Label("car", (300.5, 100.0, 420.0, 200.0)), Label("person", (10.0, 20.0, 110.0, 220.0))),
                        verdict="labelled", schema_version="3")
    assert item.split == assign_split(group_key("lobby", 1_764_400_000.0))
    assert item_problems(item, {"person", "car"}, "3") == []


def test_neighbouring_frames_of_one_camera_share_a_split():
    first = item_from_label(accepted("t1"), SHA, 1)
    later = accepted("t2")
    later.captured_at.FromSeconds(1_764_400_000 + 5)
    assert item_from_label(later, SHA, 1).split == first.split


def test_nothing_to_label_is_an_item_without_boxes():
    item = item_from_label(accepted(verdict="nothing_to_label", boxes=()), SHA, 10)
    assert item.verdict == "nothing_to_label" and item.labels == ()
    assert item_problems(item, None, "3") == []


def test_labels_that_cannot_be_items_are_named_with_a_reason():
    assert label_problem(accepted()) is None
    assert label_problem(accepted(task_id="")).reason == "no_task_id"
    assert label_problem(accepted(verdict="unusable", boxes=())).reason == "verdict_not_for_datasets"
    no_image = accepted()
    no_image.ClearField("frame")
    assert label_problem(no_image).reason == "no_image"
    no_size = accepted()
    no_size.width = 0
    assert label_problem(no_size).reason == "no_image_size"


def test_a_label_event_time_is_read_to_the_nanosecond():
    assert event_seconds(accepted()) == 1_764_400_100.5


def test_the_commit_message_names_the_tasks():
    items = [item_from_label(accepted(f"t{i}"), SHA, 1) for i in range(5)]
    assert commit_message(items) == "5 accepted label(s) from vigil.annotations (tasks t0, t1, t2 and 2 more)"


def test_a_version_is_due_at_n_labels_or_after_t_or_on_request_and_never_empty():
    policy = CommitPolicy(every_labels=100, every_s=600)
    assert not commit_due(99, 599.0, False, policy)
    assert commit_due(100, 0.0, False, policy)
    assert commit_due(1, 600.0, False, policy)
    assert commit_due(1, 0.0, True, policy)
    assert not commit_due(0, 10_000.0, True, policy)
