"""The training job's parts that need no store: what the lineage says of the data, and `vigil train` refusing what
it cannot use before it reaches any store (exit 2)."""
from __future__ import annotations

from dataclasses import replace

from cli.__main__ import main
from services.training.job import data_lineage
from tests.dataset_items import T0, item


def test_the_data_lineage_counts_items_label_tasks_and_each_cameras_capture_range():
    items = [item("a", ("person", 0, 0, 10, 10), camera_id="gate", captured_at=T0),
             replace(item("b", camera_id="gate", captured_at=T0 + 90), source_task_ids=("t-1", "t-2")),
             replace(item("c", camera_id="yard", captured_at=T0 + 30), source_task_ids=("t-1",))]
    lineage = data_lineage(items)
    assert lineage == {
        "items": 3, "source_task_ids": 3,  # task-a, t-1 and t-2
        "captured_from": "2025-11-29T08:00:00Z", "captured_to": "2025-11-29T08:01:30Z",
        "cameras": {"gate": {"items": 2, "captured_from": "2025-11-29T08:00:00Z",
                             "captured_to": "2025-11-29T08:01:30Z"},
                    "yard": {"items": 1, "captured_from": "2025-11-29T08:00:30Z",
                             "captured_to": "2025-11-29T08:00:30Z"}}}


def test_items_without_a_capture_time_give_no_range():
    assert data_lineage([item("a", captured_at=0.0)])["captured_from"] is None


def test_vigil_train_refuses_a_bad_dataset_name_and_a_negative_margin_with_exit_2(tmp_path, capsys):
    assert main(["--state-dir", str(tmp_path), "train", "no/such@v1"]) == 2
    assert main(["--state-dir", str(tmp_path), "train", "site@v1", "--margin", "-0.1"]) == 2
    assert "--margin must be >= 0" in capsys.readouterr().err
