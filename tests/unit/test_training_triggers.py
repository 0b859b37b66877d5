"""Which announced dataset versions start a training job (services/training/triggers.py): commits of triggering
datasets with enough labelled items, and not a version the registry already holds a candidate of (same base model,
dataset version and seed)."""
from __future__ import annotations

from protos import events_pb2
from services.training.triggers import TriggerPolicy, first_trained_on, trained_on


def announced(action: str = "commit", dataset: str = "site", items: int = 120, version: str = "abc123"
              ) -> events_pb2.DatasetVersion:
    event = events_pb2.DatasetVersion(dataset=dataset, version=version, action=action, item_count=items)
    event.statistics["items"] = items
    return event


def test_a_commit_with_enough_items_triggers():
    assert TriggerPolicy(min_items=40).skip_reason(announced(items=40)) is None


def test_tags_exports_imports_and_collections_do_not_trigger():
    policy = TriggerPolicy()
    for action in ("tag", "export", "import", "gc"):
        assert "not a commit" in policy.skip_reason(announced(action=action))


def test_a_small_version_is_skipped_so_tiny_test_datasets_start_no_job():
    assert TriggerPolicy(min_items=40).skip_reason(announced(items=12)) == "12 labelled items, fewer than 40"


def test_only_the_configured_datasets_trigger_and_none_configured_means_all():
    assert TriggerPolicy(frozenset({"site"})).skip_reason(announced(dataset="site")) is None
    assert "does not trigger" in TriggerPolicy(frozenset({"site"})).skip_reason(announced(dataset="lab"))
    assert TriggerPolicy().skip_reason(announced(dataset="lab")) is None


def test_an_announcement_without_statistics_counts_its_items():
    event = events_pb2.DatasetVersion(dataset="site", version="abc", action="commit", item_count=50)
    assert TriggerPolicy(min_items=40).skip_reason(event) is None


def manifest(version: int, lineage: dict | None) -> dict:
    return {"name": "yolov3-tiny", "version": version, "model_json": {"lineage": lineage} if lineage else {},
            "lineage": {"parent_version": None, "derived_from": lineage}}


def test_a_version_trained_with_the_same_seed_is_found_in_the_registry():
    converted = manifest(1, None)
    other_seed = manifest(2, {"dataset": "site", "dataset_version": "abc123", "seed": 1})
    same = manifest(3, {"dataset": "site", "dataset_version": "abc123", "seed": 0})
    assert not trained_on(converted, "site", "abc123", 0)
    assert first_trained_on([same, other_seed, converted], "site", "abc123", 0) is same
    assert first_trained_on([other_seed, converted], "site", "abc123", 0) is None
    assert first_trained_on([same], "site", "abc124", 0) is None
    assert first_trained_on([same], "lab", "abc123", 0) is None


def test_a_version_committed_long_ago_is_history_not_a_trigger():
    event = announced()
    event.envelope.event_time.FromSeconds(1_000_000)
    policy = TriggerPolicy(max_age_s=24 * 3600)
    assert policy.skip_reason(event, now_s=1_000_000 + 3600) is None
    assert "25.0 h ago" in policy.skip_reason(event, now_s=1_000_000 + 25 * 3600)
    assert TriggerPolicy().skip_reason(event, now_s=1_000_000 + 25 * 3600) is None  # no limit
    assert policy.skip_reason(announced(), now_s=1e10) is None  # no commit time: not judged by age
