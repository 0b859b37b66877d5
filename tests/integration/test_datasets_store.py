"""The dataset store on a real SeaweedFS S3 (started for this module alone): blobs stored once, versions with
lineage, the validation gate, two processes racing on one branch (exactly one wins each round, the loser's retry
lands, nothing lost), a committer killed between manifest and ref (the previous version stays the head, nothing
half-written shows), garbage collection with referenced, unreferenced and young blobs, an exact diff of two stored
versions, stable splits and the leakage check."""
from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import timedelta

import pytest

from libs.common.objectstore import ObjectIntegrityError, RefConflict, ensure_bucket, put_verified
from services.annotation.schemas import LabelSchema
from services.datasets.diff import diff
from services.datasets.gc import collect_garbage
from services.datasets.splits import item_split, leakage
from services.datasets.store import BLOB_PREFIX, CommitRefused, DatasetStore, TagExists, UnknownRef, manifest_key
from tests.dataset_items import T0, item, jpeg
from tests.integration.datasets_committer import client_settings, race_rounds
from tests.integration.infrastructure import object_store

pytestmark = pytest.mark.integration

BUCKET = "vigil-datasets"
SCHEMA = LabelSchema(version="1", classes=("person", "car", "bicycle"))


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("datasets")) as client:
        ensure_bucket(client, BUCKET)
        yield client


@pytest.fixture
def store(s3) -> DatasetStore:
    return DatasetStore(s3, BUCKET, schema=SCHEMA)


@pytest.fixture
def dataset() -> str:
    return f"ds-{uuid.uuid4().hex[:8]}"


def stored_item(store: DatasetStore, item_id: str, *labels, seed: int = 0, **fields):
    image = jpeg(seed)
    return item(item_id, *labels, blob=store.put_blob(image), size=len(image), width=160, height=120, **fields)


def test_the_same_image_twice_is_stored_once_and_read_back_verified(store, s3):
    image = jpeg(4242)
    first, second = store.put_blob(image), store.put_blob(image)
    assert first == second
    assert [o.object_name for o in s3.list_objects(BUCKET, prefix=f"{BLOB_PREFIX}{first}")] == [
        f"{BLOB_PREFIX}{first}"]
    assert store.get_blob(first) == image
    other = jpeg(4243)
    put_verified(s3, BUCKET, f"{BLOB_PREFIX}{'0' * 64}", other)  # bytes that are not what the key names
    with pytest.raises(ObjectIntegrityError):
        store.get_blob("0" * 64)


def test_versions_have_lineage_statistics_branches_and_tags_that_never_move(store, s3, dataset):
    v1 = store.commit(dataset, [stored_item(store, "a", ("person", 1, 1, 40, 80), seed=1, camera_id="cam-1"),
                                stored_item(store, "b", seed=2, camera_id="cam-2")], "first", "ann")
    v2 = store.append(dataset, [stored_item(store, "c", ("car", 5, 5, 60, 60), ("car", 70, 5, 90, 60), seed=3,
                                            camera_id="cam-1")], "second", "bob")
    assert v1.parents == () and v2.parents == (v1.version,)
    assert v2.schema_version == "" and (v2.author, v2.message) == ("bob", "second")
    assert v2.statistics["items"] == 3 and v2.statistics["boxes_per_class"] == {"car": 2, "person": 1}
    assert v2.statistics["items_per_camera"] == {"cam-1": 2, "cam-2": 1}
    assert sum(v2.statistics["items_per_split"].values()) == 3
    fresh = DatasetStore(s3, BUCKET)  # another process's view: nothing cached
    assert fresh.version(dataset, "main") == v2 and fresh.version(dataset, v1.version) == v1
    assert [m.version for m in fresh.log(dataset)] == [v2.version, v1.version]
    assert dataset in fresh.datasets() and fresh.branches(dataset) == {"main": v2.version}
    assert fresh.tag(dataset, "release-1", "main", by="ann") == v2.version
    assert fresh.tag(dataset, "release-1", v2.version) == v2.version  # again, the same version: no change
    with pytest.raises(TagExists):
        fresh.tag(dataset, "release-1", v1.version)
    assert fresh.tags(dataset) == {"release-1": v2.version} and fresh.version(dataset, "release-1") == v2
    with pytest.raises(UnknownRef):
        fresh.version(dataset, "no-such-branch")
    assert store.append(dataset, [v2.item("c")], "redelivered", "bob") == v2  # nothing new: no new version


def test_a_commit_from_a_stale_parent_is_a_conflict(store, dataset):
    v1 = store.commit(dataset, [stored_item(store, "a", seed=1)], "first", "ann", expected_parent=None)
    with pytest.raises(RefConflict):
        store.commit(dataset, [stored_item(store, "b", seed=2)], "also first", "bob", expected_parent=None)
    v2 = store.commit(dataset, [stored_item(store, "b", seed=2)], "second", "ann", expected_parent=v1.version)
    with pytest.raises(RefConflict):
        store.commit(dataset, [stored_item(store, "c", seed=3)], "stale", "bob", expected_parent=v1.version)
    assert store.head(dataset)[0] == v2.version


def test_a_refused_commit_names_every_problem_and_changes_nothing(store, s3, dataset):
    v1 = store.commit(dataset, [stored_item(store, "a", ("person", 1, 1, 40, 80), seed=1)], "first", "ann",
                      schema_version="1")
    manifests_before = {o.object_name for o in s3.list_objects(BUCKET, prefix=f"versions/{dataset}/")}
    bad = [stored_item(store, "outside", ("person", 100, 10, 170, 90), seed=2),
           stored_item(store, "unknown", ("forklift", 1, 1, 20, 20), seed=3),
           stored_item(store, "other-schema", ("car", 1, 1, 20, 20), seed=4, schema_version="2"),
           item("missing", ("car", 1, 1, 20, 20), blob="d" * 64, width=160, height=120)]
    with pytest.raises(CommitRefused) as refused:
        store.append(dataset, bad, "bad", "bob")
    assert refused.value.problems == [  # items in id order, blobs last
        "item other-schema is labelled under schema 2, the version under 1: one schema version per version",
        "item outside: box 1 (100,10)-(170,90) is not inside the 160x120 image",
        "item unknown: box 1: class 'forklift' is not in schema 1",
        f"item missing: blob {'d' * 64} is not stored",
    ]
    assert store.head(dataset)[0] == v1.version
    assert {o.object_name for o in s3.list_objects(BUCKET, prefix=f"versions/{dataset}/")} == manifests_before


def test_items_without_a_split_get_the_stable_split_of_their_group(store, dataset):
    items = [stored_item(store, f"f{n}", seed=n % 3, split="", camera_id=f"cam-{n % 4}",
                         captured_at=T0 + 97 * n) for n in range(40)]
    committed = store.commit(dataset, items, "splits", "ann")
    for original in items:
        assert committed.item(original.item_id).split == item_split(original)
    by_group = {}
    for stored in committed.items:
        by_group.setdefault((stored.camera_id, int(stored.captured_at // 600)), set()).add(stored.split)
    assert all(len(splits) == 1 for splits in by_group.values())


def test_two_processes_racing_on_one_branch_one_wins_each_round_and_the_loser_retries(s3, store, dataset):
    rounds = 4
    store.commit(dataset, [stored_item(store, "base", seed=1)], "base", "setup")
    context = multiprocessing.get_context("spawn")
    barriers = [context.Barrier(2) for _ in range(3)]
    results = context.Queue()
    settings = client_settings(s3, BUCKET)
    racers = [context.Process(target=race_rounds, args=(settings, dataset, name, seed, rounds, *barriers, results))
              for seed, name in enumerate(("alpha", "beta"), start=1)]
    for racer in racers:
        racer.start()
    try:
        outcomes = [results.get(timeout=180) for _ in range(2 * rounds)]
    finally:
        for racer in racers:
            racer.join(60)
            if racer.is_alive():
                racer.kill()
    assert all(r >= 0 for _, r, _ in outcomes), outcomes
    assert [racer.exitcode for racer in racers] == [0, 0]
    per_round = Counter((r, outcome) for _, r, outcome in outcomes)
    assert all(per_round[(r, "won")] == 1 and per_round[(r, "conflict")] == 1 for r in range(rounds)), outcomes
    head = DatasetStore(s3, BUCKET).version(dataset)
    expected = {"base"} | {f"{name}-{r}" for name in ("alpha", "beta") for r in range(rounds)}
    assert set(head.items_by_id()) == expected
    history = store.log(dataset)
    assert len(history) == 1 + 2 * rounds  # every commit landed once, in one line of first parents
    assert all(len(m.parents) == (1 if m is not history[-1] else 0) for m in history)


def test_a_committer_killed_between_manifest_and_ref_leaves_the_previous_head(s3, store, dataset):
    v1 = store.commit(dataset, [stored_item(store, "a", seed=1)], "first", "ann")
    env = {**os.environ, **{f"VIGIL_TEST_S3_{k.upper()}": v for k, v in client_settings(s3, BUCKET).items()}}
    process = subprocess.Popen([sys.executable, "-m", "tests.integration.datasets_committer", "pause", dataset,
                                "doomed"], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline().split()
        assert line[:1] == ["manifest-written"], line
        orphan = line[1]
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    assert process.returncode == -signal.SIGKILL
    fresh = DatasetStore(s3, BUCKET)
    assert fresh.head(dataset)[0] == v1.version and fresh.version(dataset) == v1
    assert [m.version for m in fresh.log(dataset)] == [v1.version]
    assert fresh.branches(dataset) == {"main": v1.version} and fresh.tags(dataset) == {}
    # The manifest it wrote is whole (an S3 PUT lands entirely or not at all) but reachable from no ref; the next
    # commit goes on from v1.
    assert s3.stat_object(BUCKET, manifest_key(dataset, orphan))
    v2 = fresh.append(dataset, [stored_item(fresh, "b", seed=2)], "after the crash", "ann")
    assert v2.parents == (v1.version,) and set(v2.items_by_id()) == {"a", "b"}


def test_garbage_collection_deletes_old_unreferenced_blobs_and_never_a_referenced_one(s3):
    bucket = f"gc-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3, bucket)
    gc_store = DatasetStore(s3, bucket)
    kept = stored_item(gc_store, "kept", seed=10)
    v1 = gc_store.commit("d", [kept, stored_item(gc_store, "dropped", seed=11)], "two", "ann")
    v2 = gc_store.commit("d", [kept], "one", "ann")  # "dropped" stays referenced by v1, reachable from v2
    old_unreferenced = gc_store.put_blob(jpeg(12))
    orphan = gc_store.commit("d", [stored_item(gc_store, "orphan", seed=13)], "lost", "ann", branch="scratch")
    s3.remove_object(bucket, "refs/d/branches/scratch")  # as if the branch had never moved to it
    gc_store.tag("d", "v1", v1.version)
    time.sleep(2.5)  # S3 times have whole seconds: the next blob is measurably younger
    young = gc_store.put_blob(jpeg(14))
    young_at = gc_store.stored_blob(young).last_modified
    # Collected as of the young blob's writing, with a grace shorter than the age of everything before it.
    as_of = dict(now=young_at, grace=timedelta(seconds=1))
    dry = collect_garbage(gc_store, dry_run=True, **as_of)
    assert sorted(dry.deleted_blobs) == sorted([old_unreferenced, orphan.items[0].blob])
    assert dry.deleted_manifests == [f"d/{orphan.version}"] and gc_store.stored_blob(old_unreferenced)
    report = collect_garbage(gc_store, **as_of)
    assert sorted(report.deleted_blobs) == sorted(dry.deleted_blobs)
    assert report.young_unreferenced_blobs == [young] and report.live_versions == 2
    assert report.referenced_blobs == 2
    assert gc_store.stored_blob(old_unreferenced) is None and gc_store.stored_blob(young) is not None
    for version in (v1, v2):
        for stored in version.items:
            assert gc_store.get_blob(stored.blob)
    with pytest.raises(UnknownRef):
        gc_store.read_manifest("d", orphan.version)
    # A grace period longer than everything's age deletes nothing.
    assert collect_garbage(gc_store, grace=timedelta(days=1)).deleted_blobs == []


def test_the_diff_of_two_stored_versions_is_exact(store, s3, dataset):
    a = store.commit(dataset, [stored_item(store, "keep", ("person", 1, 1, 40, 80), seed=1),
                               stored_item(store, "gone", ("car", 1, 1, 20, 20), seed=2),
                               stored_item(store, "relabel", ("car", 1, 1, 20, 20), seed=3),
                               stored_item(store, "move", seed=4, split="train")], "a", "ann")
    b = store.commit(dataset, [a.item("keep"), stored_item(store, "relabel", ("bicycle", 1, 1, 20, 20), seed=3),
                               stored_item(store, "move", seed=4, split="val"),
                               stored_item(store, "new", ("person", 2, 2, 30, 30), seed=5)], "b", "ann")
    fresh = DatasetStore(s3, BUCKET)
    d = diff(fresh.version(dataset, a.version), fresh.version(dataset, "main"))
    assert (d.added, d.removed, d.relabelled, d.moved, d.changed, d.unchanged) == (
        ["new"], ["gone"], ["relabel"], [("move", "train", "val")], {}, 1)
    assert d.b == b.version


def test_leakage_finds_near_duplicate_images_across_splits(store, dataset):
    items = [stored_item(store, "t1", seed=21, split="train"),
             item("v1", blob=store.put_blob(jpeg(21, brightness=10)), size=len(jpeg(21, brightness=10)),
                  width=160, height=120, split="val"),
             stored_item(store, "t2", seed=22, split="train"),
             stored_item(store, "t2-again", seed=22, split="train"),  # the same image, the same split: no leak
             stored_item(store, "s1", seed=23, split="test")]
    committed = store.commit(dataset, items, "leaky", "ann")
    assert leakage(committed, store) == [("t1", "v1")]


def test_a_commit_in_progress_keeps_its_manifest_and_blobs_through_garbage_collection(s3):
    bucket = f"gc-{uuid.uuid4().hex[:8]}"
    ensure_bucket(s3, bucket)
    reports = []

    def collect_meanwhile(_manifest) -> None:
        # Between the manifest's writing and the branch's move: reachable from no ref, younger than the grace.
        reports.append(collect_garbage(DatasetStore(s3, bucket), grace=timedelta(minutes=10)))

    committer = DatasetStore(s3, bucket, on_manifest_written=collect_meanwhile)
    new = stored_item(committer, "in-flight", seed=31)
    landed = committer.commit("d", [new], "in progress", "ann")
    [report] = reports
    assert report.deleted_blobs == [] and report.deleted_manifests == []
    assert report.young_unreachable_manifests == [f"d/{landed.version}"]
    assert DatasetStore(s3, bucket).version("d") == landed and committer.get_blob(new.blob)
