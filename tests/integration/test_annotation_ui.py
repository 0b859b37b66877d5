"""The review UI in Chromium (Playwright, as the dashboard's test runs it) over the real API and queue (SeaweedFS
S3 and a Kafka broker started for this module alone): a person signs in, opens a task, draws a box with the
mouse, picks its class and submits; the label is on vigil.annotations and the API serves it. A second person does
it all with the keyboard alone."""
from __future__ import annotations

import pytest

from libs.common.topics import ANNOTATION_LABELS
from protos import events_pb2
from tests.integration.annotation_web import (ApiClient, annotation_web, bootstrap, frame_jpeg,  # noqa: F401 (fixtures)
                                              new_task, s3)
from tests.integration.chromium import ARTIFACTS, headless_chromium
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import decodable, end_offsets, read_range

pytestmark = pytest.mark.integration



@pytest.fixture
def browser():
    with headless_chromium() as chromium:
        yield chromium


def open_page(browser, url: str):
    """A page that records what would be wrong: script errors, console errors, requests to anywhere else."""
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("request", lambda r: None if r.url.startswith(url) else problems.append(f"request elsewhere: {r.url}"))
    page.goto(url + "/")
    return page, problems


def label_on_topic(bootstrap: str, label_id: str) -> events_pb2.AnnotationLabel | None:
    messages = read_range(bootstrap, ANNOTATION_LABELS, None, end_offsets(bootstrap, ANNOTATION_LABELS))
    return next((x for x in decodable(events_pb2.AnnotationLabel, messages) if x.label_id == label_id), None)


def boxes_of(label: events_pb2.AnnotationLabel) -> list[tuple]:
    return [(d.label, round(d.box.x1), round(d.box.y1), round(d.box.x2), round(d.box.y2)) for d in label.labels]


def page_point(page, x: float, y: float) -> tuple[float, float]:
    """Where on the page the frame's pixel (x, y) is shown."""
    rect = page.eval_on_selector("#frame", "c => { const r = c.getBoundingClientRect(); "
                                           "return {left: r.left, top: r.top, width: r.width, height: r.height, "
                                           "w: c.width, h: c.height}; }")
    return rect["left"] + x * rect["width"] / rect["w"], rect["top"] + y * rect["height"] / rect["h"]


def test_a_box_drawn_with_the_mouse_and_given_a_class_is_submitted_and_reaches_vigil_annotations(s3, bootstrap,
                                                                                                 browser):
    with annotation_web(s3, bootstrap) as stack:
        task = new_task(11)
        stack.queue.create(task, frame_jpeg(11))
        token = stack.users.add("ana", "annotator")
        page, problems = open_page(browser, stack.url)
        page.fill("#name", "ana")
        page.fill("#token", token)
        page.click("#signin button[type=submit]")
        page.wait_for_selector(f"#frame[data-task='{task.task_id}'][data-ready='1']", timeout=15_000)
        assert page.get_attribute("#frame", "data-proposals") == "2"
        assert "only" in page.inner_text("#rules").lower() or page.inner_text("#rules").strip(), "rules shown"
        assert page.inner_text("#selection").startswith("uncertain")

        # Draw a box on an empty part of the frame, from (480, 40) to (600, 150) in the frame's pixels.
        page.mouse.move(*page_point(page, 480, 40))
        page.mouse.down()
        for step in range(1, 11):
            page.mouse.move(*page_point(page, 480 + 12 * step, 40 + 11 * step))
        page.mouse.up()
        assert page.get_attribute("#frame", "data-boxes") == "1"
        page.click("#classes li[data-class='bicycle']")
        # Move the car proposal 20 px right by dragging it: moving a proposal accepts it.
        page.mouse.move(*page_point(page, 380, 250))
        page.mouse.down()
        page.mouse.move(*page_point(page, 390, 250))
        page.mouse.move(*page_point(page, 400, 250))
        page.mouse.up()
        assert page.get_attribute("#frame", "data-boxes") == "2"
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "annotation-ui.png"))
        page.click("#submit")
        page.wait_for_selector("body[data-last-label]", timeout=15_000)
        label_id = page.get_attribute("body", "data-last-label")
        page.wait_for_selector("#empty:not([hidden])", timeout=15_000)
        assert problems == []

        on_topic = wait_for(lambda: label_on_topic(bootstrap, label_id), 30, what="the label on vigil.annotations")
        assert on_topic.task_id == task.task_id and on_topic.annotator == "ana" and on_topic.status == "accepted"
        drawn, moved = sorted(boxes_of(on_topic))
        assert drawn[0] == "bicycle" and all(abs(a - b) <= 2 for a, b in zip(drawn[1:], (480, 40, 600, 150))), drawn
        assert moved == ("car", 320, 200, 480, 300), moved
        api = ApiClient(stack.url, bearer=stack.users.add("eva", "admin"))
        shown = api.call("GET", f"/api/tasks/{task.task_id}").json()
        assert shown["state"] == "accepted" and shown["submissions"] == 1
        assert [label.label_id for label in stack.queue.labels(task.task_id)] == [label_id]


def test_the_keyboard_alone_signs_in_labels_a_task_and_marks_the_next_one_nothing_to_label(s3, bootstrap, browser):
    with annotation_web(s3, bootstrap) as stack:
        first, second = new_task(12, priority=0.9), new_task(13, priority=0.2)
        stack.queue.create(first, frame_jpeg(12))
        stack.queue.create(second, frame_jpeg(13))
        token = stack.users.add("kim", "annotator")
        page, problems = open_page(browser, stack.url)
        page.keyboard.type("kim")           # the name field has the focus
        page.keyboard.press("Tab")
        page.keyboard.type(token)
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#frame[data-task='{first.task_id}'][data-ready='1']", timeout=15_000)

        keys = ["Tab", "a",                  # select the person proposal, accept it
                "Tab", "Delete",             # select the car proposal, delete it
                "b",                         # a new box in the middle: (275, 135)-(365, 225)
                "Shift+Alt+ArrowRight", "Shift+Alt+ArrowRight",   # 20 px wider
                "Shift+ArrowDown", "ArrowLeft",                   # 10 px down, 1 px left
                "3"]                         # bicycle
        for key in keys:
            page.keyboard.press(key)
        assert page.get_attribute("#frame", "data-boxes") == "2" and page.get_attribute("#frame", "data-proposals") == "0"
        page.keyboard.press("?")
        assert page.is_visible("#help")
        page.keyboard.press("Escape")
        page.keyboard.press("Enter")
        page.wait_for_selector(f"#frame[data-task='{second.task_id}'][data-ready='1']", timeout=15_000)
        first_label = page.get_attribute("body", "data-last-label")
        page.keyboard.press("x")
        assert page.get_attribute("#frame", "data-verdict") == "nothing_to_label"
        page.keyboard.press("Enter")
        # (The page's CSP forbids eval, so waits are selectors, not functions.)
        page.wait_for_selector(f"body[data-last-label]:not([data-last-label='{first_label}'])", timeout=15_000)
        second_label = page.get_attribute("body", "data-last-label")
        assert problems == []

        labelled = wait_for(lambda: label_on_topic(bootstrap, first_label), 30, what="the first label")
        assert sorted(boxes_of(labelled)) == [("bicycle", 274, 145, 384, 235), ("person", 100, 120, 160, 260)]
        nothing = wait_for(lambda: label_on_topic(bootstrap, second_label), 30, what="the second label")
        assert nothing.verdict == "nothing_to_label" and not nothing.labels and nothing.task_id == second.task_id
        api = ApiClient(stack.url, bearer=token)
        assert api.call("GET", f"/api/tasks/{first.task_id}").json()["state"] == "accepted"
        assert api.call("GET", f"/api/tasks/{second.task_id}").json()["state"] == "accepted"


def test_a_reviewer_sees_both_labels_side_by_side_accepts_one_and_reads_the_queue_statistics(s3, bootstrap,
                                                                                             browser):
    with annotation_web(s3, bootstrap, double_label_share=1.0) as stack:
        task = new_task(14)
        stack.queue.create(task, frame_jpeg(14))
        for name, boxes in (("ana", [{"label": "person", "x1": 100, "y1": 120, "x2": 160, "y2": 260}]),
                            ("bob", [{"label": "car", "x1": 300, "y1": 200, "x2": 460, "y2": 300}])):
            client = ApiClient(stack.url, bearer=stack.users.add(name, "annotator"))
            leased = client.call("POST", "/api/tasks/next").json()
            assert client.call("POST", f"/api/tasks/{leased['task_id']}/submit",
                               {"lease_id": leased["lease_id"], "verdict": "labelled", "boxes": boxes}).status == 200
        token = stack.users.add("rita", "reviewer")
        page, problems = open_page(browser, stack.url)
        page.fill("#name", "rita")
        page.fill("#token", token)
        page.press("#token", "Enter")
        page.click("#review-tab")
        card = f".disagreement[data-task='{task.task_id}']"
        page.wait_for_selector(card, timeout=15_000)
        assert page.eval_on_selector_all(f"{card} canvas", "cs => cs.length") == 2
        headings = page.inner_text(card)
        assert "A: ana, labelled, 1 box(es)" in headings and "B: bob, labelled, 1 box(es)" in headings
        bob_label = next(label for label in stack.queue.labels(task.task_id) if label.annotator == "bob")
        page.click(f"{card} button[data-label='{bob_label.label_id}']")
        page.wait_for_selector("#review-empty:not([hidden])", timeout=15_000)
        assert "Settled: accepted" in page.inner_text("#review-message")

        page.click("nav .tab[data-view='stats']")
        page.wait_for_selector("#stats tr[data-key='tasks']", timeout=15_000)
        assert page.inner_text("#stats tr[data-key='tasks'] td:nth-child(2)") == "1"
        assert problems == []
        review = stack.queue.labels(task.task_id)[-1]
        assert (review.kind, review.status, review.reviewer) == ("review", "accepted", "rita")
        assert boxes_of(review) == [("car", 300, 200, 460, 300)]
