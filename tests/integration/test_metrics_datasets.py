"""The datasets' audit trail in the metrics store on the session's real stack: DatasetVersion events produced to
vigil.datasets (commits, an import, a tag, an export, a garbage collection) land in dataset_events once each
(delivered twice in one go and replayed later), a bad one is dead-lettered with its reason, and the named queries
dataset_events and dataset_versions answer from them through the query API, and the dashboard's Datasets panel
shows the dataset's newest version and its latest events in headless Chromium."""
from __future__ import annotations

import os
import uuid

import pytest

from libs.common.envelope import new_envelope
from libs.common.topics import DATASETS
from protos import events_pb2
from tests.integration.chromium import ARTIFACTS, headless_chromium
from tests.integration.conftest import QUERY_API_TOKEN, query, wait_for
from tests.integration.kafka_tools import produce
from tests.integration.test_metrics_sink import named

pytestmark = pytest.mark.integration


def announced(dataset: str, action: str, version: str = "", items: int = 0, boxes: int = 0,
              parents: tuple[str, ...] = (), actor: str = "datasets", message: str = "",
              tag: str = "") -> tuple[bytes, bytes]:
    """A DatasetVersion as the datasets service publishes it, keyed by dataset name."""
    event = events_pb2.DatasetVersion(
        envelope=new_envelope(f"dataset/{dataset}", "datasets", event_id=str(uuid.uuid4())), dataset=dataset,
        version=version, item_count=items, parent_versions=list(parents), action=action, actor=actor,
        message=message, branch="main", tag=tag, schema_version="1")
    if version:
        event.manifest.CopyFrom(events_pb2.ObjectRef(bucket="vigil-datasets", key=f"{dataset}/manifests/{version}",
                                                     size=2048, sha256=uuid.uuid4().hex * 2))
        event.statistics.update({"items": items, "boxes": boxes, "split.train": items - items // 10,
                                 "split.val": items // 10, "class.person": boxes})
    return dataset.encode(), event.SerializeToString()


def stored_count(stack, dataset: str) -> int:
    [row] = query(stack, f"SELECT count() AS n FROM dataset_events WHERE dataset = '{dataset}'")
    return row["n"]


@pytest.fixture(scope="module")
def audited(stack):
    """A dataset of its own: v1 committed, v2 committed on it by ann; then (the second part) v2 tagged and
    exported, v3 imported by bob, a gc of the whole bucket (no dataset), a gc of the dataset, and an event without
    an action. The first part is produced twice in one go, and again (a replay) before the second."""
    dataset = f"people-{uuid.uuid4().hex[:8]}"
    first = [announced(dataset, "commit", "v1", items=100, boxes=230, message="every 100 labels"),
             announced(dataset, "commit", "v2", items=150, boxes=340, parents=("v1",), actor="ann",
                       message="the night shift")]
    second = [announced(dataset, "tag", "v2", items=150, boxes=340, actor="ann", tag="release-1"),
              announced(dataset, "export", "v2", items=150, boxes=340, actor="carl",
                        message="exported as coco to /data/out"),
              announced(dataset, "import", "v3", items=180, boxes=400, parents=("v2",), actor="bob",
                        message="imported from coco"),
              announced("", "gc", actor="cli/ops", message=f"deleted 3 blobs (after {dataset})"),
              announced(dataset, "gc", actor="ops", message="deleted 12 blobs")]
    bootstrap = stack.config.kafka_bootstrap
    produce(bootstrap, DATASETS, first * 2)
    wait_for(lambda: stored_count(stack, dataset) == len(first), 90, what="the first part stored")
    produce(bootstrap, DATASETS, [announced(dataset, "")])
    produce(bootstrap, DATASETS, first + second)
    # One partition, read in order: once the second part is stored, the replay and the bad event were read.
    wait_for(lambda: stored_count(stack, dataset) >= len(first) + len(second) - 1, 90,
             what="the second part stored")
    return dataset


def test_dataset_events_from_kafka_are_stored_once_each(stack, audited):
    [row] = query(stack, f"SELECT count() AS n, uniqExact(event_id) AS ids FROM dataset_events "
                         f"WHERE dataset = '{audited}'")
    assert (row["n"], row["ids"]) == (6, 6)
    letters = wait_for(lambda: query(stack, f"SELECT reason, origin_topic FROM dead_letters "
                                            f"WHERE message_key = '{audited}'"), 30, what="the bad event's letter")
    assert letters == [{"reason": "invalid_event", "origin_topic": DATASETS}]
    # The collection of the whole bucket is about no dataset, and stored.
    assert query(stack, f"SELECT action, actor FROM dataset_events WHERE dataset = '' "
                        f"AND message = 'deleted 3 blobs (after {audited})'") == [{"action": "gc", "actor": "cli/ops"}]


def test_the_dataset_queries_answer_through_the_api(stack, audited):
    events = named(stack, "dataset_events", dataset=audited)
    assert sorted(e["action"] for e in events) == ["commit", "commit", "export", "gc", "import", "tag"]
    assert [(e["actor"], e["version"]) for e in named(stack, "dataset_events", dataset=audited, action="gc")] == [
        ("ops", "")]
    assert [e["actor"] for e in named(stack, "dataset_events", dataset=audited, action="export")] == ["carl"]
    versions = named(stack, "dataset_versions", dataset=audited)
    assert [(v["version"], v["action"], v["item_count"], v["boxes"], v["parent_versions"]) for v in versions] == [
        ("v1", "commit", 100, 230, []), ("v2", "commit", 150, 340, ["v1"]), ("v3", "import", 180, 400, ["v2"])]
    assert versions[1]["statistics"]["split.val"] == 15 and versions[1]["message"] == "the night shift"


def test_the_dashboard_shows_the_newest_version_and_the_latest_events(stack, audited):
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 1400})
        page.goto(f"{stack.config.query_api_url}/?token={os.environ[QUERY_API_TOKEN]}")
        page.wait_for_selector(f"#dataset-latest tr[data-dataset='{audited}']", timeout=30_000)
        page.wait_for_selector(f"#dataset-events tr[data-dataset='{audited}'][data-action='gc']", timeout=30_000)
        page.locator("#datasets-panel").screenshot(path=str(ARTIFACTS / "dashboard-datasets.png"))
        latest = page.locator(f"#dataset-latest tr[data-dataset='{audited}'] td").all_inner_texts()
        exported = page.locator(f"#dataset-events tr[data-dataset='{audited}'][data-action='export'] td"
                                ).all_inner_texts()
        error = page.inner_text("#error")
    assert error == ""
    # dataset, newest version, items, boxes, train / val / test, since, by
    assert latest[:5] == [audited, "v3", "180", "400", "162 / 18 / 0"] and latest[6] == "bob", latest
    assert exported[1:] == [audited, "export", "v2", "carl", "exported as coco to /data/out"], exported
