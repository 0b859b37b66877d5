"""Which cameras are under a drift alert, which opted out of face blurring, and the intake's stable ids."""
from __future__ import annotations

import numpy as np

from libs.common.compacted import Change
from protos import events_pb2
from services.annotation.camera_privacy import OPT_OUT_LABEL, BlurOptOuts
from services.annotation.drift_alerts import DriftAlertTracker
from libs.common.faces import blur_faces
from services.annotation.intake import _in_share, task_id_of


def alert(camera_id: str, state: str, model: str = "", version: str = "") -> events_pb2.DriftAlert:
    return events_pb2.DriftAlert(camera_id=camera_id, state=state, model_name=model, model_version=version)


def test_a_camera_is_under_alert_while_any_of_its_subjects_is():
    tracker = DriftAlertTracker()
    assert tracker.apply(alert("lobby", "raised")) == ("lobby", True)
    assert tracker.apply(alert("lobby", "raised", "yolo", "1")) is None  # already under an alert
    assert tracker.apply(alert("lobby", "cleared")) is None  # the output subject's alert is still open
    assert tracker.apply(alert("lobby", "cleared", "yolo", "1")) == ("lobby", False)


def test_a_clear_without_a_raise_and_a_sensor_alert_change_nothing():
    tracker = DriftAlertTracker()
    assert tracker.apply(alert("gate", "cleared")) is None
    assert tracker.apply(events_pb2.DriftAlert(sensor_id="t-17", state="raised")) is None


def privacy_of(changes: list[Change]) -> BlurOptOuts:
    privacy = BlurOptOuts()
    privacy.apply(changes)
    return privacy


def camera(camera_id: str, **labels: str) -> events_pb2.CameraConfig:
    return events_pb2.CameraConfig(camera_id=camera_id, labels=labels)


def test_only_a_camera_labelled_out_is_not_blurred_and_it_can_opt_back_in():
    dock = camera("dock", **{OPT_OUT_LABEL: "false"})
    privacy = privacy_of([Change("dock", dock, 0), Change("lobby", camera("lobby"), 1)])
    assert privacy.opted_out("dock") and not privacy.opted_out("lobby") and not privacy.opted_out("unknown")
    privacy.apply([Change("dock", camera("dock", **{OPT_OUT_LABEL: "true"}), 0)])
    assert not privacy.opted_out("dock")
    privacy.apply([Change("lobby", camera("lobby", **{OPT_OUT_LABEL: "FALSE"}), 1), Change("lobby", None, 1)])
    assert not privacy.opted_out("lobby")  # removed from the registry: the safe default again


def test_a_task_id_is_a_function_of_the_frame_and_the_model():
    assert task_id_of("frame-1", "yolov3-tiny") == task_id_of("frame-1", "yolov3-tiny")
    assert task_id_of("frame-1", "yolov3-tiny") != task_id_of("frame-1", "ssdlite-person")
    assert task_id_of("frame-1", "yolov3-tiny") != task_id_of("frame-2", "yolov3-tiny")


def test_the_double_label_share_is_about_the_share_asked_and_stable():
    ids = [task_id_of(f"frame-{i}", "m") for i in range(20_000)]
    chosen = [i for i in ids if _in_share(i, 0.1)]
    assert 0.09 < len(chosen) / len(ids) < 0.11
    assert chosen == [i for i in ids if _in_share(i, 0.1)]
    assert not any(_in_share(i, 0.0) for i in ids[:1000]) and all(_in_share(i, 1.0) for i in ids[:1000])


def test_a_blurred_face_keeps_no_detail_and_the_rest_of_the_image_is_untouched():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    original = image.copy()
    blur_faces(image, np.array([[100, 50, 160, 130]], dtype=np.float32))
    face = image[60:120, 110:150].astype(float)
    assert face.std() < original[60:120, 110:150].astype(float).std() / 4
    assert np.array_equal(image[:30], original[:30]) and np.array_equal(image[:, 250:], original[:, 250:])
