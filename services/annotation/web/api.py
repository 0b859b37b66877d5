"""The review UI's HTTP JSON API, and the UI itself (static/), served by the annotation service on 127.0.0.1.

Signing in
  POST   /api/session  {"name": NAME, "token": TOKEN}     (a token from `vigil annotations users add`)
         → 200 {"name", "role", "roles", "csrf_token", "expires_at"} and a session cookie (HttpOnly,
           SameSite=Strict, a random id held by this process until it expires); 401 for a wrong name or token.
  GET    /api/session  → the same for the session the cookie names (the UI calls it after a reload), or for a
         Bearer token (without csrf_token); {"name": null} when nobody is signed in.
  DELETE /api/session  → 204: signed out.
  A browser session sends its CSRF token as the header `X-CSRF-Token` on every write (POST, DELETE); a write
  without it, or with another, is refused 403. API clients may instead send `Authorization: Bearer <token>` on
  every request (no session, no CSRF token). Without either every /api path but POST /api/session answers 401;
  a user whose role is too low gets 403. Nothing is written anonymously. Removing a user, or giving them a new
  token, ends their sessions within the user list's reload interval.

Annotating (role annotator)
  GET|POST /api/tasks/next   leases the next open task to the caller (highest priority first; a task the caller
         already holds comes back again) → 200 TASK, or 204 when nothing is open for them. (The UI uses POST, with
         its CSRF token; GET is for API clients. The SameSite=Strict cookie never rides on another site's request.)
  GET    /api/tasks/{id}     → 200 TASK (with the caller's lease when they hold one), 404.
  GET    /api/tasks/{id}/image   the JPEG (faces blurred unless the camera opted out). Its ETag is the image's
         sha256 and TASK's image_url carries it (?v=SHA256), so a browser keeps it (`Cache-Control: private,
         immutable`); If-None-Match answers 304.
  POST   /api/tasks/{id}/submit  {"lease_id", "verdict": "labelled"|"nothing_to_label"|"unusable",
         "boxes": [{"label", "x1", "y1", "x2", "y2"}, ...]}   (pixels of the frame; boxes only with "labelled")
         → 200 LABEL; 422 {"error", "violations": [...]} naming every rule the submission breaks (the schema's:
         known classes, boxes inside the image, minimum size; and the body's shape); 409 when the lease is lost
         (it expired and someone else leased or labelled the task since: nothing is stored). Submitting again
         under the same lease returns the first LABEL and stores nothing more; a late submission on an expired
         lease nobody else took is accepted.
  POST   /api/tasks/{id}/release {"lease_id"} → 204: the task goes back to the queue.
  GET    /api/stats          → the queue's figures (tasks per state, per rule, labels, agreement).

Reviewing (role reviewer)
  GET    /api/review/disagreements → {"items": [{"task": TASK, "labels": [LABEL, LABEL]}, ...]}: tasks labelled
         twice whose labels disagree (IoU-matched F1 < 0.8 or classes differ).
  POST   /api/tasks/{id}/review {"decision": "accept", "label_id": ID} (one of the two labels), or
         {"decision": "accept", "boxes": [...]} (the reviewer's own), or {"decision": "reject"} → 200 LABEL
         (kind "review"), 422, 404.

Admin (role admin)
  GET    /api/export?format=coco|label-studio → the accepted labels as COCO (a dict) or Label Studio task JSON
         (a list, the model's boxes as predictions).
  POST   /api/import  Label Studio task JSON (a list) → 200 {"created": N, "existing": M}.

TASK   {"task_id", "state", "camera_id", "frame_event_id", "captured_at", "width", "height", "image_url",
        "image_sha256", "proposals": [{"label", "score", "x1", "y1", "x2", "y2"}], "selection": {"rule",
        "detail"}, "priority", "model": {"name", "version"}, "labels_wanted", "submissions", "faces_blurred",
        "lease_id", "lease_expires_at" (the caller's lease, or null), "schema": {"version", "classes", "rules",
        "min_box_px"}}
LABEL  {"label_id", "task_id", "kind", "annotator", "reviewer", "verdict", "status", "boxes": [...],
        "agreement", "schema_version"}
Errors are {"error": "..."}; times are ISO 8601 in UTC."""
from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from google.protobuf.timestamp_pb2 import Timestamp
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from libs.common.http import HttpServer, json_app, json_error, static_files
from libs.common.logs import get_logger
from protos import events_pb2
from services.annotation.queue import LeaseLost, NotLeasable, SubmissionRefused, TaskSettled, UnknownTask
from services.annotation.web.users import User, UserStore, token_digest

log = get_logger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
SESSION_COOKIE = "vigil_annotation_session"
CSRF_HEADER = "x-csrf-token"
VERDICTS = ("labelled", "nothing_to_label", "unusable")
DECISIONS = ("accept", "reject")
# A submission is a few dozen boxes; an import may be a large Label Studio file.
MAX_BODY_BYTES = 256 * 1024
MAX_IMPORT_BYTES = 32 * 1024 * 1024
MAX_BOXES = 500
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# The UI loads nothing from elsewhere, runs no inline script and may not be framed.
SECURITY_HEADERS = [
    (b"content-security-policy", b"default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                 b"script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
]


def _iso(timestamp: Timestamp | None) -> str | None:
    if timestamp is None or (timestamp.seconds == 0 and timestamp.nanos == 0):
        return None
    return timestamp.ToDatetime(tzinfo=timezone.utc).isoformat(timespec="milliseconds")


def _unix_iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="seconds")


# --- sessions ---------------------------------------------------------------------------------------------------

@dataclass
class Session:
    name: str
    token_sha256: str      # the token signed in with: the session ends when the user's token changes
    csrf_token: str
    expires_at: float      # time.time()


class SessionStore:
    """Browser sessions held by this process: a random id (the cookie) → who, until when, and the CSRF token.
    Bounded: beyond `max_sessions` the oldest is dropped. Sessions do not survive a restart (people sign in
    again), and a replica knows only its own: run one replica behind the UI, or route a browser to one."""

    def __init__(self, ttl_s: float, max_sessions: int = 10_000, clock: Callable[[], float] = time.time) -> None:
        self.ttl_s, self.max_sessions, self._clock = ttl_s, max_sessions, clock
        self._sessions: OrderedDict[str, Session] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _key(session_id: str) -> str:
        # Held by digest, so a dump of this process's memory does not hand out live cookies.
        return hashlib.sha256(session_id.encode()).hexdigest()

    def open(self, user: User, token: str) -> tuple[str, Session]:
        session_id = secrets.token_urlsafe(32)
        session = Session(user.name, token_digest(token), secrets.token_urlsafe(32), self._clock() + self.ttl_s)
        with self._lock:
            self._sessions[self._key(session_id)] = session
            while len(self._sessions) > self.max_sessions:
                self._sessions.popitem(last=False)
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        key = self._key(session_id)
        with self._lock:
            session = self._sessions.get(key)
            if session is not None and session.expires_at <= self._clock():
                del self._sessions[key]
                session = None
        return session

    def close(self, session_id: str | None) -> None:
        if session_id:
            with self._lock:
                self._sessions.pop(self._key(session_id), None)

    def __len__(self) -> int:
        return len(self._sessions)


# --- conversions ------------------------------------------------------------------------------------------------

def _box_json(detection: events_pb2.Detection, with_score: bool = False) -> dict[str, Any]:
    box = detection.box
    out: dict[str, Any] = {"label": detection.label, "x1": round(box.x1, 2), "y1": round(box.y1, 2),
                           "x2": round(box.x2, 2), "y2": round(box.y2, 2)}
    if with_score:
        out["score"] = round(detection.score, 4)
    return out


def schema_json(schema: Any) -> dict[str, Any]:
    return {"version": schema.version, "classes": list(schema.classes), "rules": list(schema.rules_shown),
            "min_box_px": getattr(schema, "min_box_px", None)}


def label_json(label: events_pb2.AnnotationLabel) -> dict[str, Any]:
    return {"label_id": label.label_id, "task_id": label.task_id, "kind": label.kind, "annotator": label.annotator,
            "reviewer": label.reviewer or None, "verdict": label.verdict, "status": label.status,
            "boxes": [_box_json(d) for d in label.labels],
            "agreement": label.agreement if label.HasField("agreement") else None,
            "schema_version": label.schema_version, "time": _iso(label.envelope.event_time)}


def caller_lease(task: events_pb2.AnnotationTask, name: str) -> events_pb2.AnnotationLease | None:
    """The caller's newest lease on the task (expired or not: a late submission may still be taken)."""
    mine = [lease for lease in task.leases if lease.annotator == name]
    return mine[-1] if mine else None


def task_json(task: events_pb2.AnnotationTask, caller: str, schema: Any) -> dict[str, Any]:
    lease = caller_lease(task, caller)
    sha = task.frame.sha256
    return {
        "task_id": task.task_id, "state": task.state, "camera_id": task.camera_id,
        "frame_event_id": task.frame_event_id, "captured_at": _iso(task.captured_at),
        "width": task.width, "height": task.height,
        "image_url": f"/api/tasks/{task.task_id}/image" + (f"?v={sha}" if sha else ""), "image_sha256": sha or None,
        "proposals": [_box_json(d, with_score=True) for d in task.proposals],
        "selection": {"rule": task.reason, "detail": task.reason_detail}, "priority": task.priority,
        "model": {"name": task.model.name, "version": task.model.version},
        "labels_wanted": task.labels_wanted or 1, "submissions": len(task.submission_ids),
        "faces_blurred": task.faces_blurred,
        "lease_id": lease.lease_id if lease else None,
        "lease_expires_at": _iso(lease.expires_at) if lease else None,
        "schema": schema_json(schema),
    }


def parse_boxes(raw: Any, classes: tuple[str, ...] | list[str], violations: list[str]) -> list[events_pb2.Detection]:
    """The boxes of a submission or a review as Detections; what is malformed is added to `violations`."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        violations.append("boxes must be a list")
        return []
    if len(raw) > MAX_BOXES:
        violations.append(f"at most {MAX_BOXES} boxes")
        return []
    detections = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            violations.append(f"box {i + 1}: must be an object {{label, x1, y1, x2, y2}}")
            continue
        label = item.get("label")
        if not isinstance(label, str) or not label:
            violations.append(f"box {i + 1}: label must be a non-empty string")
            continue
        coordinates = [item.get(k) for k in ("x1", "y1", "x2", "y2")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in coordinates):
            violations.append(f"box {i + 1}: x1, y1, x2, y2 must be finite numbers (pixels)")
            continue
        x1, y1, x2, y2 = (float(v) for v in coordinates)
        class_id = list(classes).index(label) if label in classes else 0
        detections.append(events_pb2.Detection(
            label=label, class_id=class_id, score=1.0,
            box=events_pb2.Box(x1=min(x1, x2), y1=min(y1, y2), x2=max(x1, x2), y2=max(y1, y2))))
    return detections


class _SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, with_headers)


class _Refused(Exception):
    """422 with the violations named."""

    def __init__(self, violations: list[str]) -> None:
        super().__init__("; ".join(violations))
        self.violations = violations


# --- the app ----------------------------------------------------------------------------------------------------

class LabelExports(Protocol):
    """What /api/export and /api/import call (services/annotation/exports.py)."""

    def coco(self) -> dict: ...                                  # the accepted labels as a COCO detection file

    def label_studio(self) -> list[dict]: ...                    # every task as Label Studio task JSON

    def import_label_studio(self, items: list[dict]) -> dict: ...  # {"created": N, "existing": M, ...}; ValueError


class AnnotationApi:
    """The endpoints above over an AnnotationQueue, a UserStore, a schema provider (`.current()` → the
    LabelSchema in force; `.get(version)` when it has one, for a task labelled under an older version) and,
    for export and import, a LabelExports."""

    def __init__(self, queue: Any, users: UserStore, schemas: Any, *, session_ttl_s: float = 12 * 3600,
                 secure_cookie: bool = False, exports: LabelExports | None = None,
                 static_dir: Path = STATIC_DIR) -> None:
        self.queue, self.users, self.schemas = queue, users, schemas
        self.sessions = SessionStore(session_ttl_s)
        self.secure_cookie = secure_cookie
        self.exports = exports
        self.static_dir = static_dir

    # --- wiring ---

    def routes(self) -> list:
        e = self._endpoint
        return [
            Route("/api/session", self._sign_in, methods=["POST"]),
            Route("/api/session", self._session, methods=["GET"]),
            Route("/api/session", e(self._sign_out, None), methods=["DELETE"]),
            Route("/api/tasks/next", e(self._next, "annotator"), methods=["GET", "POST"]),
            Route("/api/tasks/{task_id}", e(self._task, "annotator"), methods=["GET"]),
            Route("/api/tasks/{task_id}/image", e(self._image, "annotator"), methods=["GET"]),
            Route("/api/tasks/{task_id}/submit", e(self._submit, "annotator"), methods=["POST"]),
            Route("/api/tasks/{task_id}/release", e(self._release, "annotator"), methods=["POST"]),
            Route("/api/tasks/{task_id}/review", e(self._review, "reviewer"), methods=["POST"]),
            Route("/api/review/disagreements", e(self._disagreements, "reviewer"), methods=["GET"]),
            Route("/api/stats", e(self._stats, "annotator"), methods=["GET"]),
            Route("/api/export", e(self._export, "admin"), methods=["GET"]),
            Route("/api/import", e(self._import, "admin", max_body=MAX_IMPORT_BYTES), methods=["POST"]),
            Route("/", lambda _: FileResponse(self.static_dir / "index.html"), methods=["GET"]),
            static_files("/static", self.static_dir),
        ]

    def app(self) -> ASGIApp:
        return json_app(self.routes(), max_body_bytes=MAX_IMPORT_BYTES, middleware=[Middleware(_SecurityHeaders)])

    def _endpoint(self, handler: Callable[..., Response], role: str | None,
                  max_body: int = MAX_BODY_BYTES) -> Callable:
        """`handler(request, user, body)` run on a worker thread (the queue blocks on S3 and Kafka) once the
        caller is authenticated, holds `role` and, on a write from a browser session, sent its CSRF token."""
        async def run(request: Request) -> Response:
            user = await run_in_threadpool(self._authenticate, request, role)
            body = await _json_body(request, max_body) if request.method in ("POST", "PUT", "PATCH") else None
            try:
                return await run_in_threadpool(handler, request, user, body)
            except (_Refused, SubmissionRefused) as refused:
                return JSONResponse({"error": "refused: " + "; ".join(refused.violations),
                                     "violations": refused.violations}, status_code=422)
            except LeaseLost as lost:
                return json_error(409, f"the lease is lost: {lost}. Nothing was stored; open the next task.")
            except (TaskSettled, NotLeasable) as conflict:
                return json_error(409, str(conflict))
            except UnknownTask as unknown:
                return json_error(404, f"no task {unknown.args[0] if unknown.args else ''}".strip())
        return run

    def _authenticate(self, request: Request, role: str | None) -> User:
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and credentials.strip():
            user = self.users.verify(credentials.strip())
            if user is None:
                raise HTTPException(401, "the token is not valid", headers={"WWW-Authenticate": "Bearer"})
        else:
            session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
            if session is None:
                raise HTTPException(401, "sign in first: POST /api/session {name, token}, or send "
                                         "Authorization: Bearer <token>", headers={"WWW-Authenticate": "Bearer"})
            user = self.users.user(session.name) if self.users.holds(session.name, session.token_sha256) else None
            if user is None:
                self.sessions.close(request.cookies.get(SESSION_COOKIE))
                raise HTTPException(401, "the session ended: the user was removed or given a new token")
            if request.method in WRITES:
                sent = request.headers.get(CSRF_HEADER, "")
                if not sent or not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
                    raise HTTPException(403, "a write from a browser session needs its X-CSRF-Token header")
        if role is not None and not user.can(role):
            raise HTTPException(403, f"{user.name} ({user.role}) lacks the role {role!r}")
        return user

    # --- sessions ---

    async def _sign_in(self, request: Request) -> Response:
        body = await _json_body(request, 4096)
        name, token = (body.get("name"), body.get("token")) if isinstance(body, dict) else (None, None)
        if not isinstance(name, str) or not isinstance(token, str) or not name or not token:
            return json_error(400, "send {\"name\": ..., \"token\": ...}")
        user = await run_in_threadpool(self.users.verify, token, name)
        if user is None:
            # The name is logged only when it is a user's: a token pasted into the name field must not be.
            known = await run_in_threadpool(self.users.user, name)
            log.info("annotation sign-in refused", user=known.name if known else "(not a user)")
            return json_error(401, "unknown name or token")
        session_id, session = self.sessions.open(user, token)
        log.info("annotation sign-in", user=user.name, role=user.role)
        response = JSONResponse(self._session_json(user, session))
        response.set_cookie(SESSION_COOKIE, session_id, max_age=int(self.sessions.ttl_s), path="/", httponly=True,
                            samesite="strict", secure=self.secure_cookie)
        return response

    async def _session(self, request: Request) -> Response:
        """Who the caller is. Answered 200 with "name": null when nobody is signed in (a page asks this first)."""
        try:
            user = await run_in_threadpool(self._authenticate, request, None)
        except HTTPException as refused:
            if refused.status_code != 401:
                raise
            return JSONResponse({"name": None, "why": refused.detail})
        session = self.sessions.get(request.cookies.get(SESSION_COOKIE))
        if session is None:  # a Bearer client: who it is, no CSRF token to hand out
            return JSONResponse({"name": user.name, "role": user.role, "roles": sorted(user.roles)})
        return JSONResponse(self._session_json(user, session))

    def _sign_out(self, request: Request, user: User, _body: Any) -> Response:
        self.sessions.close(request.cookies.get(SESSION_COOKIE))
        response = Response(status_code=204)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict", secure=self.secure_cookie)
        return response

    @staticmethod
    def _session_json(user: User, session: Session) -> dict[str, Any]:
        return {"name": user.name, "role": user.role, "roles": sorted(user.roles), "csrf_token": session.csrf_token,
                "expires_at": _unix_iso(session.expires_at)}

    # --- tasks ---

    def _schema_for(self, task: events_pb2.AnnotationTask | None = None) -> Any:
        version = task.schema_version if task is not None else ""
        get = getattr(self.schemas, "get", None)
        if version and get is not None:
            try:
                found = get(version)
            except (KeyError, ValueError, LookupError):
                found = None
            if found is not None:
                return found
        return self.schemas.current()

    def _task_or_404(self, task_id: str) -> events_pb2.AnnotationTask:
        task = self.queue.get(task_id)
        if task is None:
            raise HTTPException(404, f"no task {task_id}")
        return task

    def _next(self, _request: Request, user: User, _body: Any) -> Response:
        task = self.queue.lease_next(user.name)
        if task is None:
            return Response(status_code=204)
        return JSONResponse(task_json(task, user.name, self._schema_for(task)))

    def _task(self, request: Request, user: User, _body: Any) -> Response:
        task = self._task_or_404(request.path_params["task_id"])
        return JSONResponse(task_json(task, user.name, self._schema_for(task)))

    def _image(self, request: Request, user: User, _body: Any) -> Response:
        task_id = request.path_params["task_id"]
        task = self._task_or_404(task_id)
        etag = f'"{task.frame.sha256}"' if task.frame.sha256 else None
        headers = {"Cache-Control": "private, max-age=86400, immutable"} if etag else {"Cache-Control": "no-store"}
        if etag:
            headers["ETag"] = etag
            if etag in [tag.strip() for tag in request.headers.get("if-none-match", "").split(",")]:
                return Response(status_code=304, headers=headers)
        return Response(self.queue.image(task_id), media_type="image/jpeg", headers=headers)

    def _submit(self, request: Request, user: User, body: Any) -> Response:
        task = self._task_or_404(request.path_params["task_id"])
        body = _object(body)
        violations: list[str] = []
        lease_id, verdict = body.get("lease_id"), body.get("verdict")
        if not isinstance(lease_id, str) or not lease_id:
            violations.append("lease_id is required: the lease the task was opened under")
        if not isinstance(verdict, str):
            violations.append(f"verdict must be one of {', '.join(VERDICTS)}")
        boxes = parse_boxes(body.get("boxes", []), self._schema_for(task).classes, violations)
        if violations:
            raise _Refused(violations)
        # The queue checks the lease first (409), then the schema's rules (422, every violation named).
        label = self.queue.submit(task.task_id, lease_id, user.name, verdict, boxes)
        return JSONResponse(label_json(label))

    def _release(self, request: Request, user: User, body: Any) -> Response:
        lease_id = _object(body).get("lease_id")
        if not isinstance(lease_id, str) or not lease_id:
            raise _Refused(["lease_id is required"])
        task = self._task_or_404(request.path_params["task_id"])
        self.queue.release(task.task_id, lease_id, user.name)
        return Response(status_code=204)

    def _stats(self, _request: Request, _user: User, _body: Any) -> Response:
        return JSONResponse(self.queue.stats())

    # --- review ---

    def _disagreements(self, _request: Request, user: User, _body: Any) -> Response:
        items = [{"task": task_json(task, user.name, self._schema_for(task)), "labels": [label_json(x) for x in labels]}
                 for task, labels in self.queue.disagreements()]
        return JSONResponse({"items": items})

    def _review(self, request: Request, user: User, body: Any) -> Response:
        task = self._task_or_404(request.path_params["task_id"])
        body = _object(body)
        decision, label_id = body.get("decision"), body.get("label_id")
        violations: list[str] = []
        if decision not in DECISIONS:
            violations.append(f"decision must be one of {', '.join(DECISIONS)}")
        if label_id is not None and not isinstance(label_id, str):
            violations.append("label_id must be a string")
        raw_boxes = body.get("boxes")
        boxes = parse_boxes(raw_boxes, self._schema_for(task).classes, violations) if raw_boxes is not None else None
        if decision == "accept" and not label_id and boxes is None:
            violations.append("accepting needs the label_id of the label taken, or the boxes")
        if violations:
            raise _Refused(violations)
        label = self.queue.review(task.task_id, user.name, decision, label_id=label_id or None, boxes=boxes)
        return JSONResponse(label_json(label))

    # --- export, import ---

    def _export(self, request: Request, _user: User, _body: Any) -> Response:
        kind = request.query_params.get("format", "coco")
        if self.exports is None:
            return json_error(501, "exports are not wired into this server")
        if kind == "coco":
            return JSONResponse(self.exports.coco())
        if kind == "label-studio":
            return JSONResponse(self.exports.label_studio())
        return json_error(400, "format is coco or label-studio")

    def _import(self, _request: Request, user: User, body: Any) -> Response:
        if self.exports is None:
            return json_error(501, "imports are not wired into this server")
        if not isinstance(body, list):
            raise _Refused(["the body must be a JSON list of Label Studio tasks"])
        try:
            outcome = self.exports.import_label_studio(body)
        except ValueError as refused:
            raise _Refused([str(refused)]) from None
        log.info("annotation tasks imported", user=user.name, **{k: v for k, v in outcome.items()
                                                                   if isinstance(v, int)})
        return JSONResponse(outcome)


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise _Refused(["the body must be a JSON object"])
    return body


async def _json_body(request: Request, max_bytes: int) -> Any:
    """The request's JSON body (None when empty); 413 past max_bytes, counted as it streams; 400 if not JSON."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPException(413, f"body of more than {max_bytes} bytes", {"Connection": "close"})
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPException(400, f"the body is not JSON: {exc}") from None


class AnnotationWeb:
    """The API and UI served on host:port (bind a loopback address: the service refuses nothing here, people
    sign in, but the UI is meant to stay on the machine or behind a TLS proxy)."""

    def __init__(self, api: AnnotationApi, host: str, port: int) -> None:
        self.api = api
        self._server = HttpServer(api.app(), host, port, name="annotation-web")

    @property
    def port(self) -> int:
        return self._server.port

    def start(self) -> "AnnotationWeb":
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop()
