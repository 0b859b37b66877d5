"""The review API's pieces that need no queue: sessions, box parsing, the task's JSON."""
from __future__ import annotations

from services.annotation.schemas import LabelSchema
from services.annotation.web.api import SessionStore, parse_boxes, task_json
from services.annotation.web.users import GRANTS, User
from protos import events_pb2


def test_roles_nest_admin_over_reviewer_over_annotator():
    assert GRANTS["annotator"] == {"annotator"}
    assert GRANTS["reviewer"] == {"annotator", "reviewer"}
    assert GRANTS["admin"] == {"annotator", "reviewer", "admin"}


def test_a_session_expires_and_is_held_only_by_the_digest_of_its_id():
    now = [1000.0]
    sessions = SessionStore(ttl_s=60, clock=lambda: now[0])
    session_id, session = sessions.open(User("ana", "annotator", GRANTS["annotator"]), "secret-token")
    assert session_id not in repr(sessions._sessions)
    assert sessions.get(session_id) is session and session.csrf_token != session_id
    assert sessions.get(session_id + "x") is None and sessions.get(None) is None
    now[0] += 61
    assert sessions.get(session_id) is None
    assert len(sessions) == 0


def test_sessions_beyond_the_bound_drop_the_oldest():
    sessions = SessionStore(ttl_s=60, max_sessions=3)
    user = User("ana", "annotator", GRANTS["annotator"])
    ids = [sessions.open(user, "t")[0] for _ in range(5)]
    assert [sessions.get(i) is not None for i in ids] == [False, False, True, True, True]


def test_boxes_are_parsed_into_detections_and_every_malformed_one_is_named():
    violations: list[str] = []
    boxes = parse_boxes([{"label": "car", "x1": 30, "y1": 40, "x2": 10, "y2": 20.5},
                         {"label": "", "x1": 0, "y1": 0, "x2": 1, "y2": 1},
                         {"label": "person", "x1": "1", "y1": 0, "x2": 1, "y2": 1},
                         {"label": "person", "x1": float("nan"), "y1": 0, "x2": 1, "y2": 1},
                         ["person", 1, 2, 3, 4]], ("person", "car"), violations)
    assert len(boxes) == 1
    assert (boxes[0].label, boxes[0].class_id) == ("car", 1)
    assert (boxes[0].box.x1, boxes[0].box.y1, boxes[0].box.x2, boxes[0].box.y2) == (10, 20.5, 30, 40)
    assert [v.split(":")[0] for v in violations] == ["box 2", "box 3", "box 4", "box 5"]
    assert parse_boxes("car", ("car",), violations) == [] and violations[-1] == "boxes must be a list"


def test_a_task_shows_the_callers_lease_the_proposals_in_pixels_and_the_schema():
    task = events_pb2.AnnotationTask(
        task_id="t1", camera_id="cam-1", state="leased", width=640, height=360, reason="uncertain",
        reason_detail="top score 0.41 in the band [0.25, 0.60]", frame=events_pb2.ObjectRef(sha256="ab" * 32),
        proposals=[events_pb2.Detection(label="person", score=0.41,
                                        box=events_pb2.Box(x1=10, y1=20, x2=110, y2=220))],
        leases=[events_pb2.AnnotationLease(annotator="bob", lease_id="l-bob"),
                events_pb2.AnnotationLease(annotator="ana", lease_id="l-ana")])
    task.leases[1].expires_at.FromSeconds(1_800_000_000)
    schema = LabelSchema(version="3", classes=("person", "car"), rules_shown=("only fully visible objects",))
    shown = task_json(task, "ana", schema)
    assert shown["lease_id"] == "l-ana" and shown["lease_expires_at"].startswith("2027-01-15T08:00:00")
    assert shown["image_url"] == f"/api/tasks/t1/image?v={'ab' * 32}"
    assert shown["proposals"] == [{"label": "person", "score": 0.41, "x1": 10, "y1": 20, "x2": 110, "y2": 220}]
    assert shown["selection"] == {"rule": "uncertain", "detail": "top score 0.41 in the band [0.25, 0.60]"}
    assert shown["schema"]["classes"] == ["person", "car"] and shown["schema"]["rules"] == ["only fully visible objects"]
    assert task_json(task, "eve", schema)["lease_id"] is None
