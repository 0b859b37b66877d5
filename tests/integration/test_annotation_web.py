"""The review API over a real AnnotationQueue (SeaweedFS S3 and a Kafka broker started for this module alone):
sign-in, CSRF and Bearer tokens, roles, leasing and submitting, a lost lease, a review, images cached by hash."""
from __future__ import annotations

import time

import pytest

from libs.common.topics import ANNOTATION_LABELS
from protos import events_pb2
from tests.integration.annotation_web import (ApiClient, annotation_web, bootstrap, frame_jpeg,  # noqa: F401 (fixtures)
                                              new_task, s3)
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import decodable, end_offsets, read_range

pytestmark = pytest.mark.integration


def labels_on_topic(bootstrap: str, label_id: str) -> list[events_pb2.AnnotationLabel]:
    messages = read_range(bootstrap, ANNOTATION_LABELS, None, end_offsets(bootstrap, ANNOTATION_LABELS))
    return [label for label in decodable(events_pb2.AnnotationLabel, messages) if label.label_id == label_id]


def test_nothing_is_served_or_written_without_signing_in_and_a_browser_write_needs_its_csrf_token(s3, bootstrap,
                                                                                                  capfd):
    with annotation_web(s3, bootstrap) as stack:
        stack.queue.create(new_task(1), frame_jpeg(1))
        token = stack.users.add("ana", "annotator")
        anonymous = ApiClient(stack.url)
        for method, path in (("GET", "/api/tasks/next"), ("POST", "/api/tasks/next"), ("GET", "/api/stats"),
                             ("POST", "/api/tasks/x/submit"), ("GET", "/api/review/disagreements")):
            assert anonymous.call(method, path, {} if method == "POST" else None).status == 401, path
        assert anonymous.sign_in("ana", token + "x").status == 401
        assert anonymous.sign_in("bob", token).status == 401, "a token signs in only as its own name"
        assert anonymous.sign_in(token, token).status == 401, "a token typed as the name"
        page = anonymous.call("GET", "/")
        assert page.status == 200, "the UI's page itself is public; its data is not"
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
        assert page.headers["X-Frame-Options"] == "DENY"
        assert anonymous.call("GET", "/api/session").json()["name"] is None

        browser = ApiClient(stack.url)
        signed = browser.sign_in("ana", token)
        assert signed.status == 200 and signed.json()["roles"] == ["annotator"]
        cookie = signed.headers.get("set-cookie")
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and token not in cookie
        assert browser.call("GET", "/api/session").json()["csrf_token"] == browser.csrf
        assert browser.call("POST", "/api/tasks/next", csrf=False).status == 403
        assert browser.call("POST", "/api/tasks/next", headers={"X-CSRF-Token": "forged"}, csrf=False).status == 403
        task = browser.call("POST", "/api/tasks/next").json()
        assert task["lease_id"] and task["schema"]["classes"] == ["person", "car", "bicycle"]
        assert browser.call("GET", "/api/review/disagreements").status == 403, "an annotator is no reviewer"
        assert browser.call("GET", "/api/export?format=coco").status == 403
        assert browser.call("DELETE", "/api/session").status == 204
        assert browser.call("GET", "/api/tasks/next").status == 401, "signed out"
        assert browser.call("GET", "/api/session").json()["name"] is None
        logged = capfd.readouterr()
        assert "annotation sign-in refused" in logged.out + logged.err
        assert token not in logged.out + logged.err, "no token in the logs"


def test_a_task_is_leased_shown_with_its_image_and_submitted_once_per_lease(s3, bootstrap):
    with annotation_web(s3, bootstrap) as stack:
        created = new_task(2, priority=0.9)
        image = frame_jpeg(2)
        stack.queue.create(created, image)
        stack.queue.create(new_task(3, priority=0.1), frame_jpeg(3))
        api = ApiClient(stack.url, bearer=stack.users.add("ana", "annotator"))

        task = api.call("GET", "/api/tasks/next").json()
        assert task["task_id"] == created.task_id, "highest priority first"
        assert (task["width"], task["height"], task["state"]) == (640, 360, "leased")
        assert task["proposals"][0] == {"label": "person", "score": 0.41, "x1": 100, "y1": 120, "x2": 160, "y2": 260}
        assert task["selection"]["rule"] == "uncertain" and task["lease_expires_at"]
        assert api.call("GET", "/api/tasks/next").json()["task_id"] == created.task_id, "the task held comes back"

        picture = api.call("GET", task["image_url"])
        assert picture.status == 200 and picture.body == image
        assert picture.headers["Content-Type"] == "image/jpeg" and "immutable" in picture.headers["Cache-Control"]
        assert api.call("GET", task["image_url"], headers={"If-None-Match": picture.headers["ETag"]}).status == 304

        refused = api.call("POST", f"/api/tasks/{task['task_id']}/submit", {
            "lease_id": task["lease_id"], "verdict": "labelled",
            "boxes": [{"label": "dragon", "x1": 10, "y1": 10, "x2": 50, "y2": 50},
                      {"label": "car", "x1": 600, "y1": 300, "x2": 700, "y2": 380},
                      {"label": "car", "x1": 5, "y1": 5, "x2": 6, "y2": 6},
                      {"label": "car", "x1": "a", "y1": 5, "x2": 6, "y2": 6}]})
        assert refused.status == 422
        assert refused.json()["violations"] == ["box 4: x1, y1, x2, y2 must be finite numbers (pixels)"]
        refused = api.call("POST", f"/api/tasks/{task['task_id']}/submit", {
            "lease_id": task["lease_id"], "verdict": "labelled",
            "boxes": [{"label": "dragon", "x1": 10, "y1": 10, "x2": 50, "y2": 50},
                      {"label": "car", "x1": 600, "y1": 300, "x2": 700, "y2": 380},
                      {"label": "car", "x1": 5, "y1": 5, "x2": 6, "y2": 6}]})
        assert refused.status == 422
        violations = refused.json()["violations"]
        assert [v.split(":")[0] for v in violations] == ["box 1", "box 2", "box 3"], violations
        assert "dragon" in violations[0] and "inside" in violations[1] and "minimum" in violations[2]

        huge = [{"label": "person", "x1": 1, "y1": 1, "x2": 9, "y2": 9}] * 6000
        assert api.call("POST", f"/api/tasks/{task['task_id']}/submit",
                        {"lease_id": task["lease_id"], "verdict": "labelled", "boxes": huge}).status == 413
        boxes = [{"label": "person", "x1": 101, "y1": 118, "x2": 162, "y2": 258}]
        first = api.call("POST", f"/api/tasks/{task['task_id']}/submit",
                         {"lease_id": task["lease_id"], "verdict": "labelled", "boxes": boxes})
        assert first.status == 200, first.body
        again = api.call("POST", f"/api/tasks/{task['task_id']}/submit",
                         {"lease_id": task["lease_id"], "verdict": "labelled", "boxes": boxes})
        assert again.json()["label_id"] == first.json()["label_id"]
        assert first.json()["status"] == "accepted" and first.json()["boxes"] == boxes
        assert api.call("GET", f"/api/tasks/{task['task_id']}").json()["state"] == "accepted"
        on_topic = wait_for(lambda: labels_on_topic(stack.bootstrap, first.json()["label_id"]), 30,
                            what="the label on vigil.annotations")
        assert len(on_topic) == 1 and on_topic[0].annotator == "ana" and on_topic[0].labels[0].label == "person"
        stats = api.call("GET", "/api/stats").json()
        assert stats["tasks"] == 2 and stats["by_state"]["accepted"] == 1
        assert api.call("GET", "/api/tasks/nope").status == 404


def test_a_submission_after_the_lease_lapsed_and_someone_else_leased_is_refused_409(s3, bootstrap):
    with annotation_web(s3, bootstrap, lease_s=1.0) as stack:
        stack.queue.create(new_task(4), frame_jpeg(4))
        ana = ApiClient(stack.url, bearer=stack.users.add("ana", "annotator"))
        bob = ApiClient(stack.url, bearer=stack.users.add("bob", "annotator"))
        late = ana.call("POST", "/api/tasks/next").json()
        assert bob.call("POST", "/api/tasks/next").status == 204, "held by ana"
        time.sleep(1.2)
        taken = bob.call("POST", "/api/tasks/next").json()
        assert taken["task_id"] == late["task_id"]
        lost = ana.call("POST", f"/api/tasks/{late['task_id']}/submit",
                        {"lease_id": late["lease_id"], "verdict": "nothing_to_label", "boxes": []})
        assert lost.status == 409 and "lease" in lost.json()["error"]
        assert bob.call("POST", f"/api/tasks/{taken['task_id']}/submit",
                        {"lease_id": taken["lease_id"], "verdict": "nothing_to_label"}).status == 200


def test_a_reviewer_settles_two_labels_that_disagree_and_a_removed_user_is_signed_out(s3, bootstrap):
    with annotation_web(s3, bootstrap, double_label_share=1.0, users_reload_s=0.3) as stack:
        stack.queue.create(new_task(5), frame_jpeg(5))
        ana = ApiClient(stack.url, bearer=stack.users.add("ana", "annotator"))
        bob = ApiClient(stack.url, bearer=stack.users.add("bob", "annotator"))
        rita = ApiClient(stack.url)
        assert rita.sign_in("rita", stack.users.add("rita", "reviewer")).status == 200
        for client, boxes in ((ana, [{"label": "person", "x1": 100, "y1": 120, "x2": 160, "y2": 260}]),
                              (bob, [{"label": "car", "x1": 300, "y1": 200, "x2": 460, "y2": 300}])):
            task = client.call("POST", "/api/tasks/next").json()
            answer = client.call("POST", f"/api/tasks/{task['task_id']}/submit",
                                 {"lease_id": task["lease_id"], "verdict": "labelled", "boxes": boxes})
            assert answer.status == 200 and answer.json()["status"] == "submitted"
        items = rita.call("GET", "/api/review/disagreements").json()["items"]
        assert len(items) == 1 and [label["annotator"] for label in items[0]["labels"]] == ["ana", "bob"]
        chosen = items[0]["labels"][1]
        settled = rita.call("POST", f"/api/tasks/{items[0]['task']['task_id']}/review",
                            {"decision": "accept", "label_id": chosen["label_id"]})
        assert settled.status == 200, settled.body
        assert settled.json()["kind"] == "review" and settled.json()["status"] == "accepted"
        assert settled.json()["reviewer"] == "rita" and settled.json()["boxes"] == chosen["boxes"]
        assert rita.call("GET", "/api/review/disagreements").json()["items"] == []
        assert rita.call("POST", f"/api/tasks/{items[0]['task']['task_id']}/review",
                         {"decision": "reject"}).status == 409, "settled already"

        stack.users.remove("rita")
        time.sleep(0.4)
        assert rita.call("GET", "/api/stats").status == 401


def test_an_admin_exports_accepted_labels_as_coco_and_label_studio_and_imports_tasks_back(s3, bootstrap):
    with annotation_web(s3, bootstrap) as stack:
        labelled, pending = new_task(6, priority=0.9), new_task(7, priority=0.1)
        stack.queue.create(labelled, frame_jpeg(6))
        stack.queue.create(pending, frame_jpeg(7))
        ana = ApiClient(stack.url, bearer=stack.users.add("ana", "annotator"))
        task = ana.call("POST", "/api/tasks/next").json()
        assert ana.call("POST", f"/api/tasks/{task['task_id']}/submit", {
            "lease_id": task["lease_id"], "verdict": "labelled",
            "boxes": [{"label": "car", "x1": 300, "y1": 200, "x2": 460, "y2": 300}]}).status == 200
        assert ana.call("GET", "/api/export?format=coco").status == 403
        assert ana.call("POST", "/api/import", []).status == 403

        admin = ApiClient(stack.url)
        admin.sign_in("eva", stack.users.add("eva", "admin"))
        coco = admin.call("GET", "/api/export?format=coco").json()
        assert len(coco["images"]) == 1 and [a["bbox"] for a in coco["annotations"]] == [[300, 200, 160, 100]]
        studio = admin.call("GET", "/api/export?format=label-studio").json()
        assert sorted(item["data"]["vigil_task_id"] for item in studio) == sorted([labelled.task_id, pending.task_id])
        assert admin.call("GET", "/api/export?format=yolo").status == 400

        again = admin.call("POST", "/api/import", studio)
        assert again.status == 200 and (again.json()["created"], again.json()["existing"]) == (0, 2)
        foreign = [{"data": {"image": "https://example.com/a.jpg", "width": 640, "height": 360}}]
        refused = admin.call("POST", "/api/import", foreign)
        assert refused.status == 422 and "does not fetch images" in refused.json()["violations"][0]
        assert admin.call("POST", "/api/import", {"not": "a list"}).status == 422
        assert admin.call("POST", "/api/import", studio, csrf=False).status == 403
