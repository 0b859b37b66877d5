"""The datasets service on the real stack: accepted labels on vigil.annotations (their images in the annotation
bucket, as the annotation queue stores them) become items of a committed version of the dataset's working branch,
announced as a DatasetVersion on vigil.datasets; a label read again doubles nothing, a newer one of a task replaces
it; labels that cannot be items are dead-lettered with their reason; a label read but not committed when the
service is SIGKILLed is committed after the restart. And end to end: a label submitted through the annotation
service's HTTP API appears in a committed version."""
from __future__ import annotations

import hashlib
import json
import re
import time
import urllib.error
import urllib.request
import uuid

import pytest

from libs.common.envelope import new_envelope
from libs.common.kafka import DLQ_REASON, DLQ_SERVICE
from libs.common.objectstore import object_store_client
from libs.common.settings import ObjectStoreSettings
from libs.common.topics import ANNOTATION_LABELS, DATASETS, DLQ
from protos import events_pb2
from services.annotation.task_store import TaskStore
from services.datasets.settings import DatasetsSettings
from services.datasets.store import DatasetStore, UnknownRef
from tests.integration.annotation_web import frame_jpeg
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import decodable, end_offsets, produce, read_range

pytestmark = pytest.mark.integration
SETTINGS = DatasetsSettings()
ANNOTATION_BUCKET = "vigil-annotation"  # the stack's annotation service's


def s3(stack):
    return object_store_client(ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                                   access_key=stack.config.s3_access_key,
                                                   secret_key=stack.config.s3_secret_key))


def put_image(stack, seed: int) -> tuple[bytes, events_pb2.ObjectRef]:
    """A frame stored where the annotation queue stores a task's image (content-addressed)."""
    jpeg = frame_jpeg(seed)
    return jpeg, TaskStore(s3(stack), ANNOTATION_BUCKET).put_image(jpeg)


def accepted_label(task_id: str, frame: events_pb2.ObjectRef, boxes=(("person", 100, 120, 160, 260),),
                   verdict: str = "labelled", status: str = "accepted", camera_id: str = "datasets-cam",
                   at: float | None = None) -> events_pb2.AnnotationLabel:
    label_id = str(uuid.uuid4())
    at = time.time() if at is None else at
    label = events_pb2.AnnotationLabel(
        envelope=new_envelope(f"camera/{camera_id}", "annotation", event_id=label_id, event_time_ns=int(at * 1e9)),
        task_id=task_id, annotator="ana", label_id=label_id, kind="submission", verdict=verdict, status=status,
        rejected=verdict != "labelled", camera_id=camera_id, frame=frame, width=640, height=360,
        schema_version=current_schema(), reason="uncertain")
    for name, x1, y1, x2, y2 in boxes:
        label.labels.add(label=name, score=1.0, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))
    label.captured_at.FromSeconds(int(at) - 30)
    return label


_schema: list[str] = []


def current_schema() -> str:
    return _schema[0] if _schema else "1"


@pytest.fixture(scope="module", autouse=True)
def schema_version(stack):
    """Labels carry the schema version the stack's annotation service labels under (one per version)."""
    from services.annotation.schemas import SchemaStore
    version = wait_for(lambda: SchemaStore(s3(stack), ANNOTATION_BUCKET).current_version(), 120,
                       what="the annotation service's label schema")
    _schema[:] = [version]
    return version


def publish(stack, *labels: events_pb2.AnnotationLabel) -> None:
    produce(stack.config.kafka_bootstrap, ANNOTATION_LABELS,
            [(label.task_id.encode(), label.SerializeToString()) for label in labels])


def request_commit(stack) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{stack.config.ports.datasets_commit}/commit", data=b"",
                                     method="POST")
    with urllib.request.urlopen(request, timeout=90) as response:
        return json.loads(response.read())


def store_of(stack) -> DatasetStore:
    return DatasetStore(s3(stack), SETTINGS.bucket)


def head(stack):
    try:
        return store_of(stack).version(SETTINGS.dataset, SETTINGS.branch)
    except UnknownRef:
        return None


def committed_with(stack, task_ids, timeout_s: float = 90):
    """Asks for a commit until the branch's head holds every task (the labels may not be read yet at the first
    request); the head."""
    def holds():
        request_commit(stack)
        found = head(stack)
        return found if found is not None and all(found.item(t) for t in task_ids) else None
    return wait_for(holds, timeout_s, interval_s=1, what=f"a version holding {sorted(task_ids)}")


def announced(stack, start, version: str) -> events_pb2.DatasetVersion:
    def find():
        messages = read_range(stack.config.kafka_bootstrap, DATASETS, start, end_offsets(stack.config.kafka_bootstrap,
                                                                                           DATASETS))
        return [e for e in decodable(events_pb2.DatasetVersion, messages) if e.version == version]
    events = wait_for(find, 60, what=f"version {version} on vigil.datasets")
    assert len({e.envelope.event_id for e in events}) == 1, "announced again, it is the same event"
    return events[0]


def datasets_letters(stack, start) -> list:
    bootstrap = stack.config.kafka_bootstrap
    return [m for m in read_range(bootstrap, DLQ, start, end_offsets(bootstrap, DLQ))
            if dict(m.headers() or []).get(DLQ_SERVICE) == b"datasets"]


def test_accepted_labels_appear_in_a_committed_version_announced_on_vigil_datasets(stack):
    datasets_start = end_offsets(stack.config.kafka_bootstrap, DATASETS)
    jpeg, frame = put_image(stack, 101)
    _, other_frame = put_image(stack, 102)
    boxed, empty, shared = (str(uuid.uuid4()) for _ in range(3))
    submitted = str(uuid.uuid4())
    labels = [accepted_label(boxed, frame, boxes=(("person", 100, 120, 160, 260), ("car", 300, 200, 460, 300))),
              accepted_label(empty, other_frame, boxes=(), verdict="nothing_to_label"),
              accepted_label(shared, frame),  # the same image again: one blob
              accepted_label(submitted, frame, status="submitted")]  # a first of two labels: not the dataset's
    publish(stack, *labels)

    version = committed_with(stack, [boxed, empty, shared])
    item = version.item(boxed)
    assert item.blob == hashlib.sha256(jpeg).hexdigest() and item.size == len(jpeg)
    assert store_of(stack).get_blob(item.blob) == jpeg
    assert version.item(shared).blob == item.blob
    assert [(label.label, label.box) for label in item.labels] == [("car", (300.0, 200.0, 460.0, 300.0)),
                                                                   ("person", (100.0, 120.0, 160.0, 260.0))]
    assert (item.camera_id, item.width, item.height, item.verdict) == ("datasets-cam", 640, 360, "labelled")
    assert item.captured_at == labels[0].captured_at.seconds and item.source_task_ids == (boxed,)
    assert item.split in ("train", "val", "test") and item.schema_version == current_schema()
    assert version.item(empty).verdict == "nothing_to_label" and version.item(empty).labels == ()
    assert version.item(submitted) is None
    assert version.author == "datasets" and "accepted label" in version.message

    event = announced(stack, datasets_start, version.version)
    assert (event.action, event.actor, event.dataset, event.branch) == ("commit", "datasets", SETTINGS.dataset,
                                                                         SETTINGS.branch)
    assert event.item_count == len(version.items) and list(event.parent_versions) == list(version.parents)
    assert event.manifest.key.endswith(f"{version.version}.json") and event.statistics["items"] == len(version.items)


def test_a_label_read_again_doubles_nothing_and_a_newer_label_of_the_task_replaces_it(stack):
    _, frame = put_image(stack, 103)
    task = str(uuid.uuid4())
    first = accepted_label(task, frame, boxes=(("person", 10, 10, 50, 90),))
    publish(stack, first)
    before = committed_with(stack, [task])

    datasets_start = end_offsets(stack.config.kafka_bootstrap, DATASETS)
    publish(stack, first)  # delivered again, as at-least-once may
    time.sleep(2)
    assert request_commit(stack)["version"] == before.version, "the same label again is no new version"
    after = head(stack)
    assert after.version == before.version
    assert [i.item_id for i in after.items].count(task) == 1
    # Announced again (the first announcement may be what a crash prevented), as the same event.
    announced(stack, datasets_start, before.version)

    newer = accepted_label(task, frame, boxes=(("car", 200, 100, 300, 200),), at=time.time() + 1)
    publish(stack, newer)

    def relabelled():
        request_commit(stack)
        found = head(stack)
        return found if found.item(task).labels[0].label == "car" else None
    latest = wait_for(relabelled, 60, interval_s=1, what="the newer label committed")
    assert [(l.label, l.box) for l in latest.item(task).labels] == [("car", (200.0, 100.0, 300.0, 200.0))]
    assert [i.item_id for i in latest.items].count(task) == 1 and latest.parent is not None


def test_labels_that_cannot_be_items_go_to_the_dead_letter_topic_with_their_reason(stack):
    start = end_offsets(stack.config.kafka_bootstrap, DLQ)
    missing = events_pb2.ObjectRef(bucket=ANNOTATION_BUCKET, key=f"images/{'0' * 64}.jpg", sha256="0" * 64)
    _, frame = put_image(stack, 104)
    gone, unusable = str(uuid.uuid4()), str(uuid.uuid4())
    produce(stack.config.kafka_bootstrap, ANNOTATION_LABELS, [(b"poison", b"\xff\x00 not a label \x01")])
    publish(stack, accepted_label(gone, missing), accepted_label(unusable, frame, boxes=(), verdict="unusable"))

    letters = wait_for(lambda: (found := datasets_letters(stack, start)) and len(found) >= 3 and found, 60,
                       what="three dead letters from datasets")
    reasons = {m.key(): dict(m.headers())[DLQ_REASON] for m in letters}
    assert reasons == {b"poison": b"malformed_event", gone.encode(): b"missing_image",
                       unusable.encode(): b"verdict_not_for_datasets"}
    assert stack.supervisor.running_pid("datasets")


def labels_waiting(stack) -> float:
    """The service's count of items taken and waiting for their version (/metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.config.ports.datasets_ops}/metrics", timeout=10) as r:
        text = r.read().decode()
    return float(re.search(r"^vigil_datasets_labels_waiting ([0-9.e+]+)$", text, re.M).group(1))


def test_a_label_read_but_not_committed_when_the_service_is_killed_is_committed_after_the_restart(stack):
    request_commit(stack)  # nothing waiting: the next label is the only one
    _, frame = put_image(stack, 105)
    task = str(uuid.uuid4())
    publish(stack, accepted_label(task, frame))
    wait_for(lambda: labels_waiting(stack) >= 1, 60, interval_s=0.2, what="the label taken")
    time.sleep(1)  # a runner committing offsets as it reads would have committed them by now
    assert head(stack) is None or head(stack).item(task) is None, "not committed yet (10 minutes, 100 labels)"

    stack.supervisor.kill("datasets")
    assert head(stack) is None or head(stack).item(task) is None, "nothing committed it before the kill"
    stack.supervisor.up(progress=lambda *_: None)
    try:
        version = committed_with(stack, [task])
    except AssertionError:
        print(stack.supervisor.log_tail("datasets", 30))
        raise
    assert [i.item_id for i in version.items].count(task) == 1


def test_labels_accepted_in_the_annotation_service_appear_in_a_committed_version(stack):
    """End to end: a task in the stack's annotation queue, leased and submitted through its HTTP API by a signed-in
    annotator; its accepted label flows through vigil.annotations into a committed version."""
    from services.annotation.task_store import AnnotationQueue
    from services.annotation.web.users import UserStore
    from tests.integration.annotation_web import ApiClient, new_task

    client = s3(stack)
    task = new_task(106, priority=1000.0, camera_id="e2e-cam")
    task.schema_version = current_schema()
    task.labels_wanted = 1
    jpeg = frame_jpeg(106)
    queue = AnnotationQueue(client, ANNOTATION_BUCKET, {"bootstrap.servers": stack.config.kafka_bootstrap},
                            double_label_share=0.0, client_id=f"test-{uuid.uuid4().hex[:6]}", reconcile_s=0).start()
    try:
        assert queue.create(task, jpeg)
    finally:
        queue.close()

    name = f"e2e-{uuid.uuid4().hex[:6]}"
    token = UserStore(client, ANNOTATION_BUCKET).add(name, "annotator", by="test")
    api = ApiClient(f"http://127.0.0.1:{stack.config.ports.annotation_ui}")
    wait_for(lambda: api.sign_in(name, token).status == 200, 30, what="the new user known to the service")

    def leased():
        answer = api.call("POST", "/api/tasks/next")
        return answer.json() if answer.status == 200 and (answer.json() or {}).get("task_id") == task.task_id \
            else None
    lease = wait_for(leased, 60, interval_s=1, what="the task served by the annotation service")
    boxes = [{"label": "person", "x1": 101, "y1": 118, "x2": 162, "y2": 258}]
    submitted = api.call("POST", f"/api/tasks/{task.task_id}/submit",
                         {"lease_id": lease["lease_id"], "verdict": "labelled", "boxes": boxes})
    assert submitted.status == 200, submitted.body
    assert submitted.json()["status"] == "accepted"

    version = committed_with(stack, [task.task_id])
    item = version.item(task.task_id)
    assert [(l.label, l.box) for l in item.labels] == [("person", (101.0, 118.0, 162.0, 258.0))]
    assert item.blob == hashlib.sha256(jpeg).hexdigest() and item.camera_id == "e2e-cam"
    assert (item.width, item.height) == (task.width, task.height)


def test_readers_have_their_own_read_only_credentials_and_no_bucket_is_public(stack):
    from minio import Minio
    from minio.error import S3Error

    _, frame = put_image(stack, 107)
    task = str(uuid.uuid4())
    publish(stack, accepted_label(task, frame))
    written = committed_with(stack, [task])

    endpoint = f"127.0.0.1:{stack.config.ports.s3}"
    reader = Minio(endpoint, access_key=stack.config.datasets_read_access_key,
                   secret_key=stack.config.datasets_read_secret_key, secure=False)
    store = DatasetStore(reader, SETTINGS.bucket)
    version = store.version(SETTINGS.dataset, written.version)
    assert version.item(task) is not None and store.get_blob(version.item(task).blob)
    assert SETTINGS.dataset in store.datasets() and store.log(SETTINGS.dataset, written.version)

    def refused(call) -> str:
        with pytest.raises(S3Error) as caught:
            call()
        return caught.value.code
    import io
    assert refused(lambda: reader.put_object(SETTINGS.bucket, "blobs/sha256/intruder", io.BytesIO(b"x"), 1)) \
        == "AccessDenied"
    assert refused(lambda: reader.remove_object(SETTINGS.bucket, f"versions/{SETTINGS.dataset}/"
                                                                 f"{written.version}.json")) == "AccessDenied"
    assert store.version(SETTINGS.dataset, written.version) == written, "nothing was deleted"
    assert refused(lambda: reader.get_object(ANNOTATION_BUCKET, frame.key)) == "AccessDenied"
    anonymous = Minio(endpoint, secure=False)
    assert refused(lambda: anonymous.get_object(SETTINGS.bucket, f"versions/{SETTINGS.dataset}/"
                                                                 f"{written.version}.json")) == "AccessDenied"


def test_sigterm_commits_the_waiting_labels_before_the_service_exits(stack):
    request_commit(stack)
    _, frame = put_image(stack, 108)
    task = str(uuid.uuid4())
    publish(stack, accepted_label(task, frame))
    wait_for(lambda: labels_waiting(stack) >= 1, 60, interval_s=0.2, what="the label taken")
    assert head(stack) is None or head(stack).item(task) is None

    stack.supervisor.stop("datasets", progress=lambda *_: None)
    try:
        version = head(stack)
        assert version is not None and version.item(task) is not None, stack.supervisor.log_tail("datasets", 20)
        assert '"stopped"' in stack.supervisor.log_tail("datasets", 5)
    finally:
        stack.supervisor.up(progress=lambda *_: None)
