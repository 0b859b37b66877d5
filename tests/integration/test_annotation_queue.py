"""The annotation queue (services/annotation/task_store.AnnotationQueue) against a real SeaweedFS S3 and a real Kafka
broker, both started for this module alone: lease expiry, double submission, a restart mid-lease, two replicas
racing for the same tasks, the late-submission rule both ways, double labelling with agreement and a reviewer
settling a disagreement. Each test has a bucket and topics of its own."""
from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from minio import Minio
from prometheus_client import REGISTRY

from libs.common.objectstore import ensure_bucket, read_ref
from protos import events_pb2
from services.annotation import queue as rules
from services.annotation.queue import LeaseLost, SubmissionRefused
from services.annotation.schemas import LabelSchema
from services.annotation.task_store import AnnotationQueue, TaskRecord, image_key, task_key
from tests.integration.conftest import wait_for
from tests.integration.infrastructure import kafka_broker, object_store
from tests.integration.kafka_tools import decodable, end_offsets, read_range

pytestmark = pytest.mark.integration

LEASE_S = 30.0
SCHEMA = LabelSchema(version="1", classes=("person", "car"))


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Minio:
    with object_store(tmp_path_factory.mktemp("objectstore")) as client:
        yield client


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory) -> str:
    with kafka_broker(tmp_path_factory.mktemp("kafka")) as address:
        yield address


class Clock:
    """Wall time plus an offset the test moves forward, shared by the replicas of a test."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


@pytest.fixture
def place(s3, bootstrap):
    """A bucket and topics of the test's own, and a maker of queues over them (closed at the end)."""
    suffix = uuid.uuid4().hex[:8]
    bucket = f"annotation-{suffix}"
    ensure_bucket(s3, bucket)
    tasks_topic, labels_topic = f"vigil.test.annotation.tasks-{suffix}", f"vigil.test.annotations-{suffix}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics([NewTopic(tasks_topic, 3, 1, config={"cleanup.policy": "compact"}),
                                   NewTopic(labels_topic, 3, 1)])
    for future in created.values():
        future.result(30)
    wait_for(lambda: led(bootstrap, [tasks_topic, labels_topic]), 30, 0.2, what="the new topics' leaders")
    clock = Clock()
    made: list[AnnotationQueue] = []

    class Place:
        def __init__(self) -> None:
            self.bucket, self.tasks_topic, self.labels_topic, self.clock = bucket, tasks_topic, labels_topic, clock
            self.bootstrap = bootstrap

        def queue(self, lease_s: float = LEASE_S, double_label_share: float = 0.0) -> AnnotationQueue:
            q = AnnotationQueue(s3, bucket, {"bootstrap.servers": bootstrap}, lease_s=lease_s,
                                double_label_share=double_label_share, schemas=SCHEMA,
                                tasks_topic=tasks_topic, labels_topic=labels_topic, clock=clock)
            made.append(q)
            return q.start(timeout_s=60)

        def label_events(self) -> list[events_pb2.AnnotationLabel]:
            end = end_offsets(bootstrap, labels_topic)
            return decodable(events_pb2.AnnotationLabel, read_range(bootstrap, labels_topic, None, end))

        def record(self, task_id: str) -> TaskRecord:
            return TaskRecord.decode(*read_ref(s3, bucket, task_key(task_id)))

    yield Place()
    for q in made:
        q.close()


def led(bootstrap: str, topics: list[str]) -> bool:
    """Every partition of the topics has a leader (a topic just created has none for a moment)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex[:8]}"})
    try:
        for topic in topics:
            for partition in consumer.list_topics(topic, timeout=10).topics[topic].partitions:
                consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
        return True
    except KafkaException:
        return False
    finally:
        consumer.close()


def new_task(n: int, priority: float = 0.5, wanted: int = 0) -> events_pb2.AnnotationTask:
    return events_pb2.AnnotationTask(task_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"task/{uuid.uuid4()}/{n}")),
                                     camera_id="cam-1", frame_event_id=f"frame-{n}", width=640, height=480,
                                     priority=priority, reason="uncertain", labels_wanted=wanted,
                                     schema_version="1")


def box(label: str, x1: float, y1: float, x2: float, y2: float) -> events_pb2.Detection:
    return events_pb2.Detection(label=label, box=events_pb2.Box(x1=x1, y1=y1, x2=x2, y2=y2))


CAR = [box("car", 10, 10, 110, 90)]


def my_lease(task: events_pb2.AnnotationTask, annotator: str) -> str:
    return [lease.lease_id for lease in task.leases if lease.annotator == annotator][-1]


def test_a_task_is_created_once_with_its_image_stored_by_content(s3, place):
    q = place.queue()
    task = new_task(1)
    jpeg = b"\xff\xd8 not really a jpeg \xff\xd9"
    assert q.create(task, jpeg)
    assert not q.create(task, jpeg), "a replayed task id is not created again"
    digest = hashlib.sha256(jpeg).hexdigest()
    stored = q.get(task.task_id)
    assert (stored.state, stored.revision, stored.frame.key) == ("open", 1, image_key(digest))
    assert q.image(task.task_id) == jpeg
    assert place.record(task.task_id).task == stored


def test_a_lapsed_lease_returns_the_task_to_the_queue(place):
    q = place.queue(lease_s=2.0)
    task = new_task(1)
    q.create(task)
    leased = q.lease_next("ann")
    assert leased.task_id == task.task_id and leased.state == "leased"
    assert q.lease_next("bob") is None
    time.sleep(2.2)  # real time: the lease's expires_at in S3 passes
    again = q.lease_next("bob")
    assert again.task_id == task.task_id
    assert [lease.annotator for lease in place.record(task.task_id).task.leases] == ["bob"]


def test_submitting_twice_under_one_lease_stores_one_label(place):
    q = place.queue()
    task = new_task(1)
    q.create(task)
    leased = q.lease_next("ann")
    lease_id = my_lease(leased, "ann")
    first = q.submit(task.task_id, lease_id, "ann", "labelled", CAR)
    second = q.submit(task.task_id, lease_id, "ann", "labelled", [box("person", 5, 5, 50, 50)])
    assert second == first and first.status == "accepted"
    assert first.label_id == rules.label_id_of(task.task_id, lease_id)
    record = place.record(task.task_id)
    assert [label.label_id for label in record.label_events()] == [first.label_id]
    assert [label.label_id for label in place.label_events()] == [first.label_id]
    assert q.get(task.task_id).state == "accepted"


def test_a_bad_submission_is_refused_with_its_violations_and_stores_nothing(place):
    q = place.queue()
    task = new_task(1)
    q.create(task)
    lease_id = my_lease(q.lease_next("ann"), "ann")
    with pytest.raises(SubmissionRefused) as refused:
        q.submit(task.task_id, lease_id, "ann", "labelled", [box("dragon", 10, 10, 20, 20), box("car", 0, 0, 1, 1)])
    assert len(refused.value.violations) == 2
    assert not place.record(task.task_id).labels and place.label_events() == []
    assert q.submit(task.task_id, lease_id, "ann", "labelled", CAR).status == "accepted"


def test_a_restart_mid_lease_keeps_the_lease_and_the_queue(place):
    first = place.queue()
    tasks = [new_task(n, priority=n / 10) for n in range(5)]
    for task in tasks:
        first.create(task)
    leased = first.lease_next("ann")
    assert leased.task_id == tasks[-1].task_id  # highest priority first
    lease_id = my_lease(leased, "ann")
    first.close()

    second = place.queue()
    assert len(second.tasks(limit=None)) == 5
    assert second.get(leased.task_id).leases == leased.leases
    assert second.lease_next("ann").task_id == leased.task_id, "ann's lease is still hers"
    assert second.lease_next("bob").task_id == tasks[3].task_id
    label = second.submit(leased.task_id, lease_id, "ann", "labelled", CAR)
    assert label.status == "accepted"
    assert second.stats()["by_state"] == {"open": 3, "leased": 1, "submitted": 0, "accepted": 1, "rejected": 0}


def test_two_replicas_racing_never_lease_one_task_twice_and_lose_nothing(place):
    replicas = [place.queue(), place.queue()]
    tasks = [new_task(n, priority=(n % 7) / 7) for n in range(40)]
    for n, task in enumerate(tasks):
        replicas[n % 2].create(task)
    for replica in replicas:
        wait_for(lambda: len(replica.tasks(limit=None)) == 40, 20, what="both replicas see every task")
    leases: list[tuple[str, str, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def annotate(replica: AnnotationQueue, annotator: str) -> None:
        try:
            while True:
                task = replica.lease_next(annotator)
                if task is None:
                    return
                lease_id = my_lease(task, annotator)
                with lock:
                    leases.append((task.task_id, annotator, lease_id))
                replica.submit(task.task_id, lease_id, annotator, "labelled", CAR)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    conflicts_before = REGISTRY.get_sample_value("vigil_annotation_cas_conflicts_total") or 0.0
    threads = [threading.Thread(target=annotate, args=(replicas[i % 2], f"annotator-{i}")) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    raced = (REGISTRY.get_sample_value("vigil_annotation_cas_conflicts_total") or 0.0) - conflicts_before
    assert raced > 0, "the replicas never wrote one task at once: the race was not tested"
    leased_ids = Counter(task_id for task_id, _, _ in leases)
    assert sorted(leased_ids) == sorted(task.task_id for task in tasks)
    assert set(leased_ids.values()) == {1}, "no task leased twice"
    for task in tasks:
        assert len(place.record(task.task_id).labels) == 1
    events = place.label_events()
    assert Counter(label.label_id for label in events) == Counter(
        {rules.label_id_of(task_id, lease_id): 1 for task_id, _, lease_id in leases})
    for replica in replicas:
        wait_for(lambda: replica.stats()["by_state"]["accepted"] == 40, 20, what="both replicas see every label")


def test_a_late_submission_is_taken_when_nobody_leased_the_task_since(place):
    q = place.queue()
    task = new_task(1)
    q.create(task)
    lease_id = my_lease(q.lease_next("ann"), "ann")
    place.clock.offset += LEASE_S + 5  # ann's lease lapsed, nobody else came
    assert q.get(task.task_id) is not None and q.stats()["by_state"]["open"] == 1
    label = q.submit(task.task_id, lease_id, "ann", "labelled", CAR)
    assert label.status == "accepted" and q.lease_next("bob") is None


def test_a_late_submission_is_refused_when_someone_else_leased_the_task_since(place):
    q = place.queue()
    task = new_task(1)
    q.create(task)
    ann_lease = my_lease(q.lease_next("ann"), "ann")
    place.clock.offset += LEASE_S + 5
    bob_task = q.lease_next("bob")
    assert bob_task.task_id == task.task_id
    with pytest.raises(LeaseLost):
        q.submit(task.task_id, ann_lease, "ann", "labelled", CAR)
    assert not place.record(task.task_id).labels and place.label_events() == [], "nothing stored for ann"
    label = q.submit(task.task_id, my_lease(bob_task, "bob"), "bob", "labelled", CAR)
    assert label.annotator == "bob" and label.status == "accepted"
    assert [event.annotator for event in place.label_events()] == ["bob"]


def test_double_labelling_accepts_agreeing_labels_and_a_reviewer_settles_a_disagreement(place):
    q = place.queue(double_label_share=1.0)
    agreed, disputed = new_task(1, priority=0.9), new_task(2, priority=0.1)
    q.create(agreed)
    q.create(disputed)
    assert q.get(agreed.task_id).labels_wanted == 2
    a1, b1 = q.lease_next("ann"), q.lease_next("bob")
    assert a1.task_id == b1.task_id == agreed.task_id, "the second annotator is offered the same task"
    assert q.lease_next("cid").task_id == disputed.task_id
    q.submit(agreed.task_id, my_lease(a1, "ann"), "ann", "labelled", CAR)
    settled = q.submit(agreed.task_id, my_lease(b1, "bob"), "bob", "labelled", [box("car", 12, 9, 108, 92)])
    assert settled.status == "accepted" and settled.agreement == pytest.approx(1.0)
    assert q.get(agreed.task_id).state == "accepted"

    c2 = q.lease_next("cid")  # cid holds it already
    a2 = q.lease_next("ann")
    assert c2.task_id == a2.task_id == disputed.task_id
    q.submit(disputed.task_id, my_lease(c2, "cid"), "cid", "labelled", CAR)
    second = q.submit(disputed.task_id, my_lease(a2, "ann"), "ann", "labelled", [box("person", 10, 10, 110, 90)])
    assert second.status == "submitted" and second.agreement == 0.0
    [(task, labels)] = q.disagreements()
    assert task.task_id == disputed.task_id and {label.annotator for label in labels} == {"cid", "ann"}
    review = q.review(disputed.task_id, "rita", "accept", label_id=second.label_id)
    assert (review.kind, review.status, review.reviewer, list(review.labels)) == \
        ("review", "accepted", "rita", list(second.labels))
    assert q.disagreements() == [] and q.get(disputed.task_id).state == "accepted"
    assert [(label.kind, label.status) for label in q.labels(disputed.task_id)] == \
        [("submission", "submitted"), ("submission", "submitted"), ("review", "accepted")]
    events = place.label_events()
    accepted = Counter(event.task_id for event in events if event.status == "accepted")
    assert accepted == Counter({agreed.task_id: 1, disputed.task_id: 1}), "one accepted label per task"
    assert len(events) == 5


def test_lease_latency_with_a_thousand_tasks_queued(place):
    q = place.queue()
    tasks = [new_task(n, priority=(n * 7919 % 1000) / 1000) for n in range(1000)]
    creators = [threading.Thread(target=lambda part: [q.create(t) for t in part], args=(tasks[i::8],))
                for i in range(8)]
    for thread in creators:
        thread.start()
    for thread in creators:
        thread.join(300)
    assert len(q.tasks(limit=None)) == 1000
    took = []
    for i in range(100):
        started = time.perf_counter()
        task = q.lease_next(f"annotator-{i}")
        took.append(time.perf_counter() - started)
        assert task is not None
    took.sort()
    p50, p95 = took[49], took[94]
    print(f"lease_next with 1000 queued: p50 {p50 * 1000:.1f} ms, p95 {p95 * 1000:.1f} ms")
    assert p95 < 0.2


def _write_without_publishing(q: AnnotationQueue, transition_of, written_ago_s: float = 60.0):
    """A transition stored in S3 by a writer that died before publishing it (written `written_ago_s` ago)."""
    record = q.store.read(transition_of.task_id)
    transition = transition_of.step(record)
    q.store.swap(record, transition, q.clock() - written_ago_s)
    return transition


class Step:
    def __init__(self, task_id: str, step) -> None:
        self.task_id, self.step = task_id, step


def test_a_transition_its_writer_never_published_is_published_by_the_next_replica_to_start(place):
    first = place.queue()
    task = new_task(1)
    first.create(task)
    now = place.clock()
    leased = _write_without_publishing(first, Step(task.task_id, lambda r: rules.lease(r.task, "ann", now, LEASE_S)))
    lease_id = my_lease(leased.task, "ann")
    submitted = _write_without_publishing(first, Step(task.task_id, lambda r: rules.submit(
        r.task, r.label_events(), lease_id, "ann", "labelled", CAR, now, SCHEMA)))
    assert first.get(task.task_id).state == "open" and place.label_events() == []

    second = place.queue()  # starts: re-reads the tasks written lately, finds S3 ahead of the topic
    wait_for(lambda: first.get(task.task_id).state == "accepted", 30, what="the repair reaching the first replica")
    assert second.get(task.task_id).revision == submitted.task.revision
    assert [label.label_id for label in place.label_events()] == [submitted.label.label_id]


def test_a_replica_leasing_a_task_s3_holds_ahead_of_kafka_publishes_it_and_leases_another(place):
    q = place.queue()
    stale, fresh = new_task(1, priority=0.9), new_task(2, priority=0.1)
    q.create(stale)
    q.create(fresh)
    now = place.clock()
    _write_without_publishing(q, Step(stale.task_id, lambda r: rules.lease(r.task, "ann", now, LEASE_S)))
    assert q.get(stale.task_id).state == "open"
    assert q.lease_next("bob").task_id == fresh.task_id
    assert q.get(stale.task_id).state == "leased"
    end = end_offsets(place.bootstrap, place.tasks_topic)
    published = decodable(events_pb2.AnnotationTask, read_range(place.bootstrap, place.tasks_topic, None, end))
    assert max(t.revision for t in published if t.task_id == stale.task_id) == 2


def test_an_older_state_published_last_is_followed_by_the_latest_for_the_next_start(place):
    q = place.queue()
    task = new_task(1)
    q.create(task)
    leased = q.lease_next("ann")
    wait_for(lambda: q._log_revision.get(task.task_id) == 2, 10, what="the lease on the topic")
    opened = place.record(task.task_id).task
    opened.revision, opened.state = 1, "open"  # a slow writer's older state, published after the newer one
    del opened.leases[:]
    producer = Producer({"bootstrap.servers": place.bootstrap})
    producer.produce(place.tasks_topic, key=task.task_id.encode(), value=opened.SerializeToString())
    assert producer.flush(10) == 0

    def last_on_topic() -> int:
        end = end_offsets(place.bootstrap, place.tasks_topic)
        records = decodable(events_pb2.AnnotationTask, read_range(place.bootstrap, place.tasks_topic, None, end))
        return [t.revision for t in records if t.task_id == task.task_id][-1]

    wait_for(lambda: last_on_topic() == 2, 20, what="the latest state published again after the older one")
    assert q.get(task.task_id).revision == 2
    restarted = place.queue()
    assert restarted.get(task.task_id).leases == leased.leases


def test_an_annotator_asking_twice_at_once_holds_one_task(place):
    q = place.queue()
    for n in range(4):
        q.create(new_task(n))
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(q.lease_next("ann").task_id)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(got) == 4 and len(set(got)) == 1
    assert q.stats()["live_leases"] == 1
