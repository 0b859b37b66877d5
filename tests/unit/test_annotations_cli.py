"""`vigil annotations`: its command-line forms, and status, list and export computed from the events the queue
publishes, without Kafka or S3."""
from __future__ import annotations

import json

import pytest

from cli.__main__ import build_parser
from cli.annotations import export_schema, print_status, print_tasks, status_summary, task_rows, write_output
from services.annotation.schemas import LabelSchema
from tests.annotation_events import CAPTURED_AT, LABELS, det, label, task

NOW = CAPTURED_AT + 7200.0
TASKS = [
    task("t1", state="accepted"), task("t2", state="accepted"), task("t3", state="rejected"),
    task("t4", state="submitted", labels_wanted=2, submission_ids=["a", "b"], reason="shadow_disagreement"),
    task("t5", state="open", priority=0.9, captured_at=CAPTURED_AT + 60, reason="rare_class"),
    task("t6", state="open", priority=0.2, captured_at=CAPTURED_AT + 30, camera_id="dock"),
    task("t7", state="leased", priority=0.5, captured_at=CAPTURED_AT + 90),
]


def test_the_command_line_forms_of_the_issue_parse():
    parse = build_parser().parse_args
    args = parse(["annotations", "export", "--format", "coco", "--out", "labels.json"])
    assert (args.command, args.annotations_command, args.format, str(args.out)) == (
        "annotations", "export", "coco", "labels.json")
    assert parse(["annotations", "export", "--format", "label-studio"]).out is None
    args = parse(["annotations", "users", "add", "ana", "--role", "reviewer"])
    assert (args.users_command, args.name, args.role) == ("add", "ana", "reviewer")
    assert parse(["annotations", "users", "remove", "ana"]).users_command == "remove"
    assert parse(["annotations", "users", "list", "--json"]).json
    assert parse(["annotations", "status"]).annotations_command == "status"
    assert parse(["annotations", "list", "--state", "open", "--limit", "5"]).limit == 5
    for wrong in (["annotations", "export", "--format", "yolo"], ["annotations", "users", "add", "x", "--role", "god"],
                  ["annotations", "export"]):
        with pytest.raises(SystemExit):
            parse(wrong)


def test_status_counts_states_rules_depth_labels_and_agreement():
    # Two more submissions in the last hour (t8's accepted on submit), with the agreement of tasks labelled twice.
    labels = LABELS + [label("t4", "submitted", [det("car", 0, 0, 10, 10)], label_id="t4-second", at=NOW - 60,
                             agreement=0.5),
                       label("t8", "accepted", [det("car", 0, 0, 10, 10)], at=NOW - 30, agreement=1.0)]
    summary = status_summary(TASKS, labels, NOW)
    assert summary["tasks"] == 7
    assert summary["by_state"] == {"open": 2, "leased": 1, "submitted": 1, "accepted": 2, "rejected": 1}
    assert summary["by_reason"] == {"rare_class": 1, "shadow_disagreement": 1, "uncertain": 5}
    assert summary["queue_depth"] == 3
    assert summary["oldest_waiting_captured_at"] == "2027-01-15T08:00:30Z"
    assert (summary["labelled_twice"], summary["awaiting_review"]) == (1, 1)
    # Submissions by label id (the review of t1 is not one): t1 twice, t2, t3, t4 twice, t8.
    assert (summary["submissions"], summary["submissions_last_hour"]) == (7, 2)
    assert (summary["accepted_tasks"], summary["accepted_last_hour"], summary["accepted_boxes"]) == (3, 1, 3)
    assert summary["agreement"] == {"measured": 2, "mean_f1": 0.75, "below_0_8": 1}
    assert status_summary([], [], NOW)["agreement"] is None


def test_list_puts_waiting_tasks_first_by_priority_and_filters():
    rows = task_rows(TASKS, LABELS)
    assert [r["task_id"] for r in rows[:3]] == ["t5", "t7", "t6"]
    first_accepted = next(r for r in rows if r["task_id"] == "t1")
    assert first_accepted["accepted"] == {"verdict": "labelled", "boxes": 2, "annotator": "ana", "reviewer": ""}
    assert [r["task_id"] for r in task_rows(TASKS, LABELS, state="open")] == ["t5", "t6"]
    assert [r["task_id"] for r in task_rows(TASKS, LABELS, camera="dock")] == ["t6"]
    assert [r["task_id"] for r in task_rows(TASKS, LABELS, reason="rare_class")] == ["t5"]
    assert len(task_rows(TASKS, LABELS, limit=2)) == 2
    assert rows[0]["image"] == "s3://vigil-annotation/images/t5.jpg"


class Store:
    def __init__(self, current=None, versions=()):
        self._current, self._versions = current, {v.version: v for v in versions}

    def current(self):
        return self._current

    def get(self, version):
        return self._versions[version]


def test_the_coco_categories_come_from_the_schema_asked_for_else_current_else_the_model_else_the_labels(tmp_path):
    one, two = LabelSchema(version="1", classes=("person",)), LabelSchema(version="2", classes=("person", "car"))
    assert export_schema(Store(two, [one, two]), "1", LABELS) is one
    assert export_schema(Store(two, [one, two]), None, LABELS) is two
    (tmp_path / "model.json").write_text(json.dumps({"labels": "labels.txt"}))
    (tmp_path / "labels.txt").write_text("person\nbicycle\n")
    assert export_schema(None, None, LABELS, tmp_path).classes == ("person", "bicycle")
    assert export_schema(Store(), None, LABELS, tmp_path / "absent").classes == ("car", "forklift", "person")


def test_export_writes_standard_output_without_out_and_a_whole_file_with_it(tmp_path, capsys):
    write_output({"images": []}, None)
    assert json.loads(capsys.readouterr().out) == {"images": []}
    out = tmp_path / "coco.json"
    write_output({"images": [1]}, out)
    assert json.loads(out.read_text()) == {"images": [1]} and capsys.readouterr().out == ""
    assert [p.name for p in tmp_path.iterdir()] == ["coco.json"]


def test_the_tables_print_for_people(capsys):
    print_status(status_summary(TASKS, LABELS, NOW))
    print_tasks(task_rows(TASKS, LABELS))
    out = capsys.readouterr().out
    assert "queue depth     3 open or leased, oldest captured 2027-01-15T08:00:30Z" in out
    assert "agreement       none measured yet" in out
    assert any(line.startswith("t1 ") and "labelled, 2 boxes" in line for line in out.splitlines())
    assert any(line.startswith("t4 ") and "2/2 in" in line for line in out.splitlines())
