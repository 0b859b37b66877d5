"""The scripted annotator: labels the annotation queue as people would, only through the annotation service's HTTP
API (services/annotation/web/api.py) with its users' tokens, its answers taken from the stronger reference
(reference.py: the served network at the frame's full 768x576, dark frames brightened first; F1 0.94 on the dusk
camera's frames against its answers on the frames as filmed, see there).

    stats = run_annotator("http://127.0.0.1:8091", scripted_users(users), stop, Reference.load(), max_tasks=40)

Each round, every user in turn leases their next task (GET /api/tasks/next, Bearer token), fetches its image, asks
the reference, and submits: the boxes in the task's schema (its classes, at least its min_box_px a side, inside the
frame), or "nothing_to_label" when the reference sees none of the site's objects. A task in the double-label share
wants a second label from another user: the next user leases it and answers it the same way (the same reference on
the same image: the two agree, and the queue accepts the task on the second label). A single label is accepted on
submit. Tasks whose two labels disagree (a person labelled one) wait for a reviewer: a user with the reviewer role
settles them (POST /api/tasks/{id}/review), accepting the submission that agrees with the reference (F1 >= 0.8),
else the reference's own boxes. Accepted labels go on vigil.annotations, where the datasets service takes them.

A 422 names the boxes the schema refuses: they are dropped and the rest submitted again. A lost lease (409: the
lease lapsed and someone else took the task) stores nothing and is counted as failed. A task whose image cannot be
fetched is tried again next round; after MAX_ATTEMPTS it is submitted "unusable" (as a person would, so the queue
moves on). If the annotator stops, the lease it holds lapses after the service's lease time and the task returns to
the queue.

Also a command: `python -m cli.demo.annotator [--state-dir DIR] [--max-tasks N]` against the local stack (adds the
users demo-annotator and demo-reviewer, with new tokens, and labels until Ctrl-C or N tasks)."""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cli.demo.reference import Box, Reference, agreement

MAX_ATTEMPTS = 3
AGREES_F1 = 0.8  # the queue's own bar for two labels to agree
HTTP_TIMEOUT_S = 30.0
ANNOTATOR, REVIEWER = "demo-annotator", "demo-reviewer"


@dataclass(frozen=True)
class Credentials:
    """A user of the annotation service and the token `vigil annotations users add` printed for them."""
    name: str
    token: str

    def __repr__(self) -> str:  # never print a token
        return f"Credentials(name={self.name!r})"


@dataclass
class AnnotatorStats:
    labelled: int = 0           # submitted with boxes
    nothing_to_label: int = 0   # submitted empty: the reference saw none of the site's objects
    unusable: int = 0           # given up on (the image never came): submitted "unusable"
    reviewed: int = 0           # disagreements settled as a reviewer
    accepted: int = 0           # submissions or reviews that came back accepted
    awaiting_second: int = 0    # submissions that came back "submitted" (the task wants another label)
    failed: list[tuple[str, str]] = field(default_factory=list)   # (task id, why)

    @property
    def submitted(self) -> int:
        return self.labelled + self.nothing_to_label + self.unusable

    def as_dict(self) -> dict[str, Any]:
        return {"labelled": self.labelled, "nothing_to_label": self.nothing_to_label, "unusable": self.unusable,
                "reviewed": self.reviewed, "accepted": self.accepted, "awaiting_second": self.awaiting_second,
                "submitted": self.submitted, "failed": [list(f) for f in self.failed]}


class ApiError(Exception):
    def __init__(self, status: int, body: Any, what: str) -> None:
        super().__init__(f"{what}: HTTP {status} {body!r}"[:500])
        self.status, self.body = status, body


class AnnotationClient:
    """One user's calls to the API, as an API client: `Authorization: Bearer <token>` on every request."""

    def __init__(self, base_url: str, credentials: Credentials, timeout_s: float = HTTP_TIMEOUT_S) -> None:
        self.base_url = base_url.rstrip("/")
        self.name = credentials.name
        self._token = credentials.token
        self.timeout_s = timeout_s
        self.roles: frozenset[str] = frozenset()
        self.role = ""

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any, bytes]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self._token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(self.base_url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                status, raw, kind = response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            status, raw, kind = error.code, error.read(), error.headers.get("Content-Type", "")
        parsed = json.loads(raw) if raw and "json" in kind else None
        return status, parsed, raw

    def sign_in(self, timeout_s: float, stop: threading.Event) -> None:
        """Who the token is (GET /api/session): waits up to `timeout_s` for a user just added (the service reads
        its user list again every few seconds)."""
        deadline = time.monotonic() + timeout_s
        while True:
            status, body, _ = self.call("GET", "/api/session")
            if status == 200 and body and body.get("name"):
                if body["name"] != self.name:
                    raise ApiError(status, {"name": body["name"]}, f"the token of {self.name} is another user's")
                self.roles = frozenset(body.get("roles", ()))
                self.role = body.get("role", "")
                return
            if time.monotonic() > deadline or stop.is_set():
                raise ApiError(status, body, f"{self.name} cannot sign in")
            stop.wait(0.5)

    def next_task(self) -> dict | None:
        status, body, _ = self.call("GET", "/api/tasks/next")
        if status == 204:
            return None
        if status != 200:
            raise ApiError(status, body, f"{self.name}: next task")
        return body

    def image(self, task: dict) -> bytes:
        status, body, raw = self.call("GET", task["image_url"])
        if status != 200:
            raise ApiError(status, body, f"image of {task['task_id']}")
        return raw

    def submit(self, task: dict, verdict: str, boxes: list[dict]) -> tuple[int, Any]:
        status, body, _ = self.call("POST", f"/api/tasks/{task['task_id']}/submit",
                                    {"lease_id": task["lease_id"], "verdict": verdict, "boxes": boxes})
        return status, body

    def disagreements(self) -> list[dict]:
        status, body, _ = self.call("GET", "/api/review/disagreements")
        if status != 200:
            raise ApiError(status, body, "disagreements")
        return body["items"]

    def review(self, task_id: str, decision: dict) -> tuple[int, Any]:
        status, body, _ = self.call("POST", f"/api/tasks/{task_id}/review", decision)
        return status, body


def answer_for(task: dict, boxes: list[Box]) -> tuple[str, list[dict]]:
    """The submission for the reference's boxes under the task's schema: its classes only, clipped to the frame,
    at least min_box_px a side; "nothing_to_label" when none is left."""
    schema = task.get("schema") or {}
    classes = set(schema.get("classes") or ())
    min_px = float(schema.get("min_box_px") or 0.0)
    width, height = float(task["width"] or 1e9), float(task["height"] or 1e9)
    kept = []
    for box in boxes:
        if classes and box.label not in classes:
            continue
        clipped = Box(box.label, max(0.0, box.x1), max(0.0, box.y1), min(width, box.x2), min(height, box.y2),
                      box.score)
        if clipped.x2 - clipped.x1 >= min_px and clipped.y2 - clipped.y1 >= min_px:
            kept.append(clipped.json())
    return ("labelled", kept) if kept else ("nothing_to_label", [])


def refused_boxes(violations: Sequence[str]) -> set[int]:
    """The 1-based box numbers a 422's violations name ("box 3: ...")."""
    return {int(m.group(1)) for v in violations if (m := re.match(r"box (\d+):", v))}


def _boxes_of_label(label: dict) -> list[Box]:
    return [Box(b["label"], b["x1"], b["y1"], b["x2"], b["y2"], 1.0) for b in label.get("boxes", ())]


class ScriptedAnnotator:
    """The loop behind run_annotator (one instance per run)."""

    def __init__(self, clients: list[AnnotationClient], reference: Reference, stop: threading.Event,
                 max_tasks: int | None, on_label: Callable[[dict, dict], None] | None,
                 log: Callable[[str], None]) -> None:
        self.clients, self.reference, self.stop = clients, reference, stop
        self.max_tasks, self.on_label, self.log = max_tasks, on_label, log
        self.stats = AnnotatorStats()
        self.attempts: dict[str, int] = {}

    def done(self) -> bool:
        return self.stop.is_set() or (self.max_tasks is not None and self.stats.submitted >= self.max_tasks)

    def round(self) -> bool:
        """Every user takes one task (and reviewers settle what waits for them); True when anything was done."""
        worked = False
        for client in self.clients:
            if self.done():
                break
            try:
                task = client.next_task()
            except (ApiError, OSError) as error:
                self.log(f"{client.name}: no task ({error})")
                continue
            if task is not None:
                worked = True
                self.label(client, task)
        for client in self.clients:
            if "reviewer" in client.roles and not self.stop.is_set():
                worked |= self.settle(client)
        return worked

    def label(self, client: AnnotationClient, task: dict) -> None:
        task_id = task["task_id"]
        try:
            boxes = self.reference.boxes_of_jpeg(client.image(task))
        except (ApiError, OSError, ValueError) as error:
            self.attempts[task_id] = self.attempts.get(task_id, 0) + 1
            if self.attempts[task_id] < MAX_ATTEMPTS:
                self.log(f"{client.name}: task {task_id}: no image yet ({error}); trying again")
                return
            self.stats.failed.append((task_id, f"image: {error}"))
            self._submit(client, task, "unusable", [])
            return
        verdict, answer = answer_for(task, boxes)
        self._submit(client, task, verdict, answer)

    def _submit(self, client: AnnotationClient, task: dict, verdict: str, boxes: list[dict]) -> None:
        task_id = task["task_id"]
        try:
            status, body = client.submit(task, verdict, boxes)
            if status == 422 and boxes:
                dropped = refused_boxes(body.get("violations", ()))
                kept = [b for i, b in enumerate(boxes, 1) if i not in dropped]
                self.log(f"{client.name}: task {task_id}: refused {body.get('violations')}; "
                         f"submitting {len(kept)} of {len(boxes)} boxes")
                verdict, boxes = ("labelled", kept) if kept else ("nothing_to_label", [])
                status, body = client.submit(task, verdict, boxes)
        except OSError as error:
            self.stats.failed.append((task_id, f"submit: {error}"))
            self.log(f"{client.name}: task {task_id}: submit failed ({error})")
            return
        if status != 200:
            why = (body or {}).get("error", f"HTTP {status}") if isinstance(body, dict) else f"HTTP {status}"
            self.stats.failed.append((task_id, f"submit {status}: {why}"))
            self.log(f"{client.name}: task {task_id}: not stored ({status}: {why})")
            if status == 422 and verdict != "unusable":
                self._submit(client, task, "unusable", [])  # the queue must move on; a person would do the same
            return
        self.attempts.pop(task_id, None)
        if verdict == "labelled":
            self.stats.labelled += 1
        elif verdict == "nothing_to_label":
            self.stats.nothing_to_label += 1
        else:
            self.stats.unusable += 1
        self.log(f"{client.name}: task {task_id} ({task.get('camera_id')}, {task['selection']['rule']}): "
                 f"{verdict} {len(boxes)} boxes -> {body['status']}; {self.stats.submitted} submitted")
        self._stored(task, body)

    def _stored(self, task: dict, label: dict) -> None:
        if label.get("status") == "accepted":
            self.stats.accepted += 1
        elif label.get("status") == "submitted":
            self.stats.awaiting_second += 1
        if self.on_label is not None:
            self.on_label(task, label)

    def settle(self, reviewer: AnnotationClient) -> bool:
        """Reviews the tasks whose two labels disagree: accepts the label that agrees with the reference, else the
        reference's boxes (or "reject" when the image cannot be had)."""
        try:
            items = reviewer.disagreements()
        except (ApiError, OSError) as error:
            self.log(f"{reviewer.name}: no disagreements ({error})")
            return False
        for item in items:
            if self.stop.is_set():
                break
            task = item["task"]
            try:
                truth = self.reference.boxes_of_jpeg(reviewer.image(task))
            except (ApiError, OSError, ValueError) as error:
                decision: dict = {"decision": "reject"}
                self.log(f"{reviewer.name}: task {task['task_id']}: image ({error}): rejecting")
            else:
                scored = [(agreement(truth, _boxes_of_label(label)).f1, label) for label in item["labels"]]
                best_f1, best = max(scored, key=lambda pair: pair[0], default=(0.0, None))
                if best is not None and best_f1 >= AGREES_F1:
                    decision = {"decision": "accept", "label_id": best["label_id"]}
                else:
                    decision = {"decision": "accept", "boxes": answer_for(task, truth)[1]}
            status, body = reviewer.review(task["task_id"], decision)
            if status != 200:
                self.stats.failed.append((task["task_id"], f"review {status}: {body}"))
                continue
            self.stats.reviewed += 1
            taken = "accepted the label that agrees with the reference" if decision.get("label_id") else \
                f"{decision['decision']}ed" + (" with the reference's boxes" if "boxes" in decision else "")
            self.log(f"{reviewer.name}: reviewed task {task['task_id']}: {taken}")
            self._stored(task, body)
        return bool(items)


def run_annotator(base_url: str, credentials: Credentials | Sequence[Credentials], stop: threading.Event | None,
                  reference: Reference, max_tasks: int | None = None,
                  on_label: Callable[[dict, dict], None] | None = None, *, idle_s: float = 1.0,
                  sign_in_timeout_s: float = 30.0, log: Callable[[str], None] | None = None) -> AnnotatorStats:
    """Labels the queue at `base_url` until `stop` is set or `max_tasks` submissions are made; returns the stats.

    credentials: one user, or several (annotators; two are needed for tasks that want two labels, and one with the
    reviewer role settles disagreements: see `scripted_users`). on_label(task, label) is called with the API's
    TASK and LABEL JSON after each stored submission or review. When the queue has nothing for anyone, waits
    `idle_s` and asks again."""
    stop = stop or threading.Event()
    log = log or (lambda line: print(f"[annotator] {line}", file=sys.stderr, flush=True))
    users = [credentials] if isinstance(credentials, Credentials) else list(credentials)
    if not users:
        raise ValueError("run_annotator needs at least one user's credentials")
    clients = [AnnotationClient(base_url, user) for user in users]
    for client in clients:
        client.sign_in(sign_in_timeout_s, stop)
    log(f"labelling {base_url} as {', '.join(f'{c.name} ({c.role})' for c in clients)}, reference "
        f"at {reference.detector.input_size[0]}x{reference.detector.input_size[1]}, brightening "
        f"{reference.brightening}")
    annotator = ScriptedAnnotator(clients, reference, stop, max_tasks, on_label, log)
    while not annotator.done():
        if not annotator.round() and not annotator.done():
            stop.wait(idle_s)
    stats = annotator.stats
    log(f"done: {stats.submitted} submitted ({stats.labelled} labelled, {stats.nothing_to_label} nothing to label, "
        f"{stats.unusable} unusable), {stats.reviewed} reviewed, {stats.accepted} accepted, "
        f"{len(stats.failed)} failed")
    return stats


def scripted_users(users, names: tuple[str, str] = (ANNOTATOR, REVIEWER), by: str = "demo") -> list[Credentials]:
    """Adds (or gives new tokens to) the scripted annotator's two users in a UserStore: an annotator, and a reviewer
    (who also labels: the second label of a task labelled twice, and settles disagreements)."""
    annotator, reviewer = names
    return [Credentials(annotator, users.add(annotator, "annotator", replace=True, by=by)),
            Credentials(reviewer, users.add(reviewer, "reviewer", replace=True, by=by))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", default=None, help="the local stack's state directory")
    parser.add_argument("--max-tasks", type=int, default=None)
    args = parser.parse_args(argv)
    from cli.annotations import BUCKET, stack_s3_client
    from cli.stack.local import LocalStack
    from services.annotation.web.users import UserStore

    stack = LocalStack(state=args.state_dir)
    credentials = scripted_users(UserStore(stack_s3_client(stack), BUCKET))
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stats = run_annotator(f"http://127.0.0.1:{stack.config.ports.annotation_ui}", credentials, stop,
                          Reference.load(), args.max_tasks)
    print(json.dumps(stats.as_dict()))
    return 0 if not stats.failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
