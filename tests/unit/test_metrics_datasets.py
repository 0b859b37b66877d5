"""The datasets' audit trail in the metrics store: every DatasetVersion on vigil.datasets (a version committed or
imported, a tag, an export, a garbage collection) is a dataset_events row, stored once however often delivered and
kept forever; the named queries dataset_events and dataset_versions, on the real engine (chdb)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta, timezone

import pytest

from libs.common.envelope import timestamp_from_ns
from libs.common.kafka import Rejected
from libs.common.topics import DATASETS
from protos import events_pb2
from services.metrics.kafka_adapter import SINK_TOPICS, MetricsBatchHandler
from services.metrics.queries import NAMED_QUERIES, bind
from services.metrics.rows import DATASET_EVENTS, InvalidEvent, dataset_event_row
from services.metrics.sink import EventSink
# A migrated store on chdb of this module's own (a module-scoped fixture).
from tests.unit.test_metrics_drift import store  # noqa: F401
from tests.unit.test_metrics_protobuf_ingest import KafkaMessage

T0 = (datetime.now(timezone.utc) - timedelta(hours=5)).replace(minute=0, second=0, microsecond=0)
WINDOW = {"since": T0.isoformat(), "until": (T0 + timedelta(hours=3)).isoformat()}


def ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1e9)


def dataset_event(dataset: str, action: str, minute: float, version: str = "", items: int = 0, boxes: int = 0,
                  parents: tuple[str, ...] = (), actor: str = "datasets", message: str = "", branch: str = "main",
                  tag: str = "", event_id: str | None = None, at: datetime | None = None
                  ) -> events_pb2.DatasetVersion:
    """An event as the datasets service publishes it; a version's events carry its manifest and statistics."""
    when = at or T0 + timedelta(minutes=minute)
    event = events_pb2.DatasetVersion(
        envelope=events_pb2.Envelope(event_id=event_id or str(uuid.uuid4()), source=f"dataset/{dataset}",
                                     producer="datasets", event_time=timestamp_from_ns(ns(when))),
        dataset=dataset, version=version, item_count=items, parent_versions=list(parents), action=action,
        actor=actor, message=message, branch=branch, tag=tag, schema_version="1")
    if version:
        event.manifest.CopyFrom(events_pb2.ObjectRef(bucket="vigil-datasets", key=f"{dataset}/manifests/{version}",
                                                     size=1000 + items, sha256=version * 2))
        event.statistics.update({"items": items, "boxes": boxes, "split.train": items - items // 5,
                                 "split.val": items // 5, "class.person": boxes})
    return event


def test_a_dataset_event_is_one_row_with_its_manifest_parents_and_statistics():
    event = dataset_event("people", "commit", 3, version="b2", items=100, boxes=240, parents=("a1",),
                          actor="ann", message="100 accepted labels")
    row = dict(zip(DATASET_EVENTS.columns, dataset_event_row(event)))
    assert str(row["event_id"]) == event.envelope.event_id
    assert (row["dataset"], row["version"], row["action"], row["actor"], row["message"], row["branch"]) == (
        "people", "b2", "commit", "ann", "100 accepted labels", "main")
    assert (row["item_count"], row["parent_versions"], row["tag"]) == (100, ["a1"], "")
    assert (row["manifest"], row["manifest_sha256"]) == ("s3://vigil-datasets/people/manifests/b2", "b2b2")
    assert row["statistics"] == {"items": 100, "boxes": 240, "split.train": 80, "split.val": 20,
                                 "class.person": 240}
    assert row["event_time"] == int((T0 + timedelta(minutes=3)).timestamp() * 1000)


def test_a_garbage_collection_is_about_no_version_and_has_no_manifest():
    row = dict(zip(DATASET_EVENTS.columns, dataset_event_row(
        dataset_event("people", "gc", 9, actor="ops", message="deleted 12 blobs"))))
    assert (row["action"], row["version"], row["manifest"], row["statistics"], row["parent_versions"]) == (
        "gc", "", "", {}, [])


def test_a_garbage_collection_of_the_whole_bucket_is_about_no_dataset():
    # As services/datasets/events.gc_event makes it for `vigil datasets gc`: no dataset, what it deleted counted.
    event = dataset_event("", "gc", 9, actor="cli/ops", message="deleted 2 blobs")
    event.statistics.update({"deleted_blobs": 2, "deleted_bytes": 300})
    row = dict(zip(DATASET_EVENTS.columns, dataset_event_row(event)))
    assert (row["dataset"], row["action"], row["statistics"]) == ("", "gc", {"deleted_blobs": 2, "deleted_bytes": 300})


def test_events_without_a_dataset_or_an_action_or_an_event_id_are_invalid():
    with pytest.raises(InvalidEvent, match="dataset is empty"):
        dataset_event_row(dataset_event("", "commit", 0, version="a1"))
    with pytest.raises(InvalidEvent, match="action is empty"):
        dataset_event_row(dataset_event("people", "", 0, version="a1"))
    with pytest.raises(InvalidEvent, match="not a UUID"):
        dataset_event_row(dataset_event("people", "commit", 0, version="a1", event_id="commit-a1"))


def handle(store, *messages: KafkaMessage) -> list:
    return MetricsBatchHandler(EventSink(store), "vigil.dlq")(list(messages))


def message(event: events_pb2.DatasetVersion) -> KafkaMessage:
    return KafkaMessage(DATASETS, event.SerializeToString(), key=event.dataset.encode())


@pytest.fixture(scope="module")
def stored(store):
    """people: a1 committed by the datasets service, b2 committed on it by ann, b2 tagged and exported, a gc;
    vehicles: v1 imported from COCO by bob, then c3 committed on it. Every message is delivered twice in one batch,
    and again in a later batch."""
    events = [
        dataset_event("people", "commit", 0, version="a1", items=100, boxes=250, message="every 100 labels"),
        dataset_event("people", "commit", 30, version="b2", items=160, boxes=390, parents=("a1",), actor="ann",
                      message="the night shift"),
        dataset_event("people", "tag", 40, version="b2", items=160, boxes=390, actor="ann", tag="release-1"),
        dataset_event("people", "export", 70, version="b2", items=160, boxes=390, actor="carl",
                      message="exported as coco to /data/out"),
        dataset_event("people", "gc", 130, actor="ops", message="deleted 12 blobs"),
        dataset_event("vehicles", "import", 10, version="v1", items=40, boxes=90, actor="bob",
                      message="imported from coco"),
        dataset_event("vehicles", "commit", 80, version="c3", items=55, boxes=120, parents=("v1",)),
    ]
    messages = [message(e) for e in events]
    assert handle(store, *messages, *messages) == [[]] * (2 * len(messages))
    assert handle(store, *messages) == [[]] * len(messages)
    return events


def named(store, name: str, **parameters) -> list[dict]:
    query = NAMED_QUERIES[name]
    answer = store.query_readonly(query.sql, bind(query, {**WINDOW, **parameters}))
    return [dict(zip(answer["columns"], row)) for row in answer["rows"]]


def test_the_sink_reads_the_datasets_topic():
    assert DATASETS in SINK_TOPICS


def test_each_dataset_event_is_stored_once_however_often_delivered(store, stored):
    [[rows, ids]] = store.query_readonly("SELECT count(), uniqExact(event_id) FROM dataset_events")["rows"]
    assert (rows, ids) == (len(stored), len(stored))


def test_dataset_events_lists_the_latest_first_and_filters_by_dataset_action_and_actor(store, stored):
    events = named(store, "dataset_events")
    assert [(e["dataset"], e["action"], e["version"]) for e in events] == [
        ("people", "gc", ""), ("vehicles", "commit", "c3"), ("people", "export", "b2"), ("people", "tag", "b2"),
        ("people", "commit", "b2"), ("vehicles", "import", "v1"), ("people", "commit", "a1")]
    assert events[2]["actor"] == "carl" and events[2]["message"] == "exported as coco to /data/out"
    assert events[3]["tag"] == "release-1"
    assert events[4]["parent_versions"] == ["a1"] and events[4]["manifest"].endswith("/people/manifests/b2")
    assert [e["version"] for e in named(store, "dataset_events", dataset="people", action="commit")] == ["b2", "a1"]
    assert [e["action"] for e in named(store, "dataset_events", actor="ann")] == ["tag", "commit"]
    assert [e["action"] for e in named(store, "dataset_events", limit=2)] == ["gc", "commit"]
    # In the window: the third hour holds the gc only.
    assert [e["action"] for e in named(store, "dataset_events", since=(T0 + timedelta(hours=2)).isoformat())] == [
        "gc"]


def test_dataset_versions_are_the_committed_and_imported_versions_with_their_counts_over_time(store, stored):
    versions = named(store, "dataset_versions")
    assert [(v["dataset"], v["version"], v["action"], v["item_count"], v["boxes"], v["parent_versions"])
            for v in versions] == [
        ("people", "a1", "commit", 100, 250, []), ("people", "b2", "commit", 160, 390, ["a1"]),
        ("vehicles", "v1", "import", 40, 90, []), ("vehicles", "c3", "commit", 55, 120, ["v1"])]
    assert versions[1]["event_time"].replace(tzinfo=timezone.utc) == T0 + timedelta(minutes=30)
    assert versions[1]["statistics"]["split.val"] == 32 and versions[1]["actor"] == "ann"
    assert [v["version"] for v in named(store, "dataset_versions", dataset="vehicles")] == ["v1", "c3"]
    assert named(store, "dataset_versions", branch="experiment") == []
    # The newest two versions (c3 at minute 80, b2 at 30), per dataset oldest first.
    assert [v["version"] for v in named(store, "dataset_versions", limit=2)] == ["b2", "c3"]


def test_a_version_announced_again_under_another_event_is_listed_once_when_first_announced(store, stored):
    again = dataset_event("people", "commit", 100, version="b2", items=160, boxes=390, parents=("a1",), actor="ann")
    assert handle(store, message(again)) == [[]]
    versions = [v for v in named(store, "dataset_versions", dataset="people") if v["version"] == "b2"]
    assert [v["event_time"].replace(tzinfo=timezone.utc) for v in versions] == [T0 + timedelta(minutes=30)]
    # The audit trail holds both announcements.
    assert [e["version"] for e in named(store, "dataset_events", dataset="people", action="commit")] == [
        "b2", "b2", "a1"]


def test_the_audit_trail_is_kept_forever(store):
    # Three years old: past every TTL the other event tables have. A merge applies a TTL: none drops this row.
    old = dataset_event("archive", "commit", 0, version="f0", items=7, at=datetime.now(timezone.utc) -
                        timedelta(days=3 * 365))
    assert handle(store, message(old)) == [[]]
    with store.writing() as client:
        client.command("OPTIMIZE TABLE dataset_events FINAL")
    [version] = named(store, "dataset_versions", dataset="archive", since="", until="")
    assert (version["version"], version["item_count"]) == ("f0", 7)


def test_bad_dataset_events_are_rejected(store):
    outcomes = handle(store, message(dataset_event("", "commit", 0, version="a1")),
                      message(dataset_event("people", "", 0, version="a1")),
                      KafkaMessage(DATASETS, b"\xff\xfe not a protobuf"))
    assert [o.reason if isinstance(o, Rejected) else o for o in outcomes] == [
        "invalid_event", "invalid_event", "malformed_event"]
    assert "dataset is empty" in outcomes[0].detail and "action is empty" in outcomes[1].detail


def test_the_events_the_datasets_service_and_cli_make_are_stored_and_a_version_listed_once(store):
    # Built by services/datasets/events.py, as `vigil datasets import` (the new version's commit, then the import),
    # `tag`, `export` and `gc` announce them; the commit announced twice (a retry) is the same event.
    from services.datasets.events import dataset_event as announced, gc_event
    from services.datasets.manifest import build_manifest
    from tests.dataset_items import item

    manifest = build_manifest("lobby-cli", [item("a", ("person", 1, 1, 40, 80), split="train"),
                                            item("b", ("car", 5, 5, 60, 60), ("car", 1, 1, 9, 9), split="val")],
                              parents=[], message="imported", author="cli/ann", schema_version="3")
    ref = events_pb2.ObjectRef(bucket="vigil-datasets", key=f"versions/lobby-cli/{manifest.version}.json", size=10)
    commit = announced(manifest, "commit", "cli/ann", branch="main", manifest_ref=ref)
    events = [commit, commit, announced(manifest, "import", "cli/ann", "imported 2 images", branch="main",
                                        manifest_ref=ref),
              announced(manifest, "tag", "cli/ann", "tagged v1", tag="v1"),
              announced(manifest, "export", "cli/bob", "exported as coco to /tmp/x"),
              gc_event("cli/ops", "deleted 2 blobs", {"deleted_blobs": 2})]
    assert handle(store, *[message(e) for e in events]) == [[]] * len(events)
    everything = {"since": "", "until": ""}
    trail = named(store, "dataset_events", dataset="lobby-cli", **everything)
    assert sorted(e["action"] for e in trail) == ["commit", "export", "import", "tag"]
    [version] = named(store, "dataset_versions", dataset="lobby-cli", **everything)
    assert (version["version"], version["action"], version["item_count"], version["boxes"]) == (
        manifest.version, "commit", 2, 3)
    assert version["statistics"]["split.val"] == 1 and version["statistics"]["class.car"] == 2
    collections = named(store, "dataset_events", action="gc", actor="cli/ops", **everything)
    assert [(c["dataset"], c["message"]) for c in collections] == [("", "deleted 2 blobs")]
