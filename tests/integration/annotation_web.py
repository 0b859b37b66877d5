"""What the review API's tests and benchmark share: a real AnnotationQueue (S3 of SeaweedFS, Kafka) with its
own compacted tasks topic, tasks with JPEG frames, the API served on a free port, and a small HTTP client that
keeps cookies. The module-scoped fixtures `s3` and `bootstrap` start a SeaweedFS and a Kafka broker for a test
module that imports them."""
from __future__ import annotations

import contextlib
import io
import json
import random
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from http.cookiejar import CookieJar
from typing import Any, Iterator

import pytest
from confluent_kafka.admin import AdminClient, NewTopic
from minio import Minio
from PIL import Image, ImageDraw

from libs.common.objectstore import ensure_bucket
from libs.common.topics import ensure_topics
from protos import events_pb2
from services.annotation.exports import Exports
from services.annotation.schemas import SchemaStore, default_schema
from services.annotation.task_store import AnnotationQueue
from services.annotation.web.api import AnnotationApi, AnnotationWeb
from services.annotation.web.users import UserStore
from tests.integration.infrastructure import kafka_broker, object_store

CLASSES = ("person", "car", "bicycle")
WIDTH, HEIGHT = 640, 360


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("objectstore")) as client:
        yield client


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory):
    with kafka_broker(tmp_path_factory.mktemp("kafka")) as address:
        yield address


def frame_jpeg(seed: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """A street-like JPEG: a grey road, a sky, a few coloured blocks where the seed puts them."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height), (120, 150, 190))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, height // 2, width, height), fill=(90, 90, 95))
    for _ in range(5):
        x, y = rng.randrange(0, width - 80), rng.randrange(height // 3, height - 60)
        draw.rectangle((x, y, x + rng.randrange(20, 80), y + rng.randrange(30, 60)),
                       fill=(rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85)
    return out.getvalue()


def new_task(seed: int, priority: float = 0.5, camera_id: str = "cam-web") -> events_pb2.AnnotationTask:
    task = events_pb2.AnnotationTask(
        task_id=str(uuid.uuid4()), camera_id=camera_id, frame_event_id=str(uuid.uuid4()), reason="uncertain",
        reason_detail="top score 0.41 in the band [0.25, 0.60]", priority=priority, width=WIDTH, height=HEIGHT,
        model=events_pb2.ModelRef(name="yolov3-tiny", version="1"), schema_version="1",
        proposals=[events_pb2.Detection(label="person", class_id=0, score=0.41,
                                        box=events_pb2.Box(x1=100, y1=120, x2=160, y2=260)),
                   events_pb2.Detection(label="car", class_id=1, score=0.55,
                                        box=events_pb2.Box(x1=300, y1=200, x2=460, y2=300))])
    task.captured_at.GetCurrentTime()
    return task


def make_topic(bootstrap: str, compacted: bool = True) -> str:
    topic = f"vigil.test.annotation-tasks-{uuid.uuid4().hex[:8]}"
    config = {"cleanup.policy": "compact"} if compacted else {}
    admin = AdminClient({"bootstrap.servers": bootstrap})  # held until the result is in
    admin.create_topics([NewTopic(topic, 1, 1, config=config)])[topic].result(30)
    return topic


@dataclass
class AnnotationWebStack:
    client: Minio
    bootstrap: str
    bucket: str
    queue: AnnotationQueue
    users: UserStore
    schemas: SchemaStore
    web: AnnotationWeb

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.web.port}"


@contextlib.contextmanager
def annotation_web(client: Minio, bootstrap: str, *, lease_s: float = 300.0, double_label_share: float = 0.0,
                   users_reload_s: float = 5.0) -> Iterator[AnnotationWebStack]:
    """A queue over a new bucket and a new tasks topic (labels go to the real vigil.annotations), its API served
    on 127.0.0.1, all stopped at the end."""
    ensure_topics({"bootstrap.servers": bootstrap})
    bucket = f"annotation-{uuid.uuid4().hex[:10]}"
    ensure_bucket(client, bucket)
    schemas = SchemaStore(client, bucket)
    schemas.ensure_current(default_schema(CLASSES), by="test")
    queue = AnnotationQueue(client, bucket, {"bootstrap.servers": bootstrap}, lease_s=lease_s,
                            double_label_share=double_label_share, schemas=schemas,
                            client_id=f"test-{uuid.uuid4().hex[:6]}", tasks_topic=make_topic(bootstrap),
                            reconcile_s=0).start()
    try:
        users = UserStore(client, bucket, reload_s=users_reload_s)
        web = AnnotationWeb(AnnotationApi(queue, users, schemas, exports=Exports(queue, schemas)), "127.0.0.1", 0).start()
        try:
            yield AnnotationWebStack(client, bootstrap, bucket, queue, users, schemas, web)
        finally:
            web.stop()
    finally:
        queue.close()


@dataclass
class Answer:
    status: int
    body: bytes
    headers: Any

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class ApiClient:
    """A browser-like client of the API: keeps the session cookie, sends the CSRF token it was given (unless told
    not to), or a Bearer token."""

    def __init__(self, base: str, bearer: str | None = None) -> None:
        self.base, self.bearer, self.csrf = base, bearer, None
        self.cookies = CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None,
             csrf: bool = True) -> Answer:
        data = None if body is None else json.dumps(body).encode()
        sent = {"Content-Type": "application/json"} if data is not None else {}
        if self.bearer:
            sent["Authorization"] = f"Bearer {self.bearer}"
        if csrf and self.csrf and method != "GET":
            sent["X-CSRF-Token"] = self.csrf
        sent.update(headers or {})
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=sent)
        try:
            with self.opener.open(request, timeout=30) as response:
                return Answer(response.status, response.read(), response.headers)
        except urllib.error.HTTPError as error:
            return Answer(error.code, error.read(), error.headers)

    def sign_in(self, name: str, token: str) -> Answer:
        answer = self.call("POST", "/api/session", {"name": name, "token": token})
        if answer.status == 200:
            self.csrf = answer.json()["csrf_token"]
        return answer
