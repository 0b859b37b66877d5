"""The object-store helpers against the real S3 of SeaweedFS (only the object store is started, on free ports, and
stopped at the end): refs updated by compare-and-swap stay exact under racing writers, objects carry and check
their sha256, staged objects are published only once verified, frames are archived once by content."""
from __future__ import annotations

import io
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from minio import Minio

from cli.stack import objectstore as objectstore_component
from cli.stack.component import StackPaths
from libs.common.cache_dir import default_cache_dir
from minio.commonconfig import ENABLED
from minio.versioningconfig import VersioningConfig

from libs.common.claimcheck import ClaimCheckError, ClaimCheckStore
from libs.common.frame_archive import FrameArchive
from libs.common.objectstore import (STAGING_PREFIX, ObjectIntegrityError, RefConflict, compare_and_swap_ref,
                                     ensure_bucket, expire_staging, get_verified, publish_staged, put_verified,
                                     read_ref, remove_stale_staging)
from protos import events_pb2
from tests.integration.stack_process import free_ports, running

pytestmark = pytest.mark.integration

ACCESS_KEY = "vigil-test"


@pytest.fixture(scope="module")
def new_client(tmp_path_factory):
    """Makes clients of a SeaweedFS started for this module alone."""
    state = tmp_path_factory.mktemp("objectstore")
    paths = StackPaths(state=state / "state", cache=default_cache_dir())
    secret_key = uuid.uuid4().hex
    s3_port, master_port, volume_port, filer_port = free_ports(4)
    spec = objectstore_component.spec(paths, s3_port=s3_port, master_port=master_port, volume_port=volume_port,
                                      filer_port=filer_port, access_key=ACCESS_KEY, secret_key=secret_key)
    objectstore_component.install(paths.cache)
    with running(spec, Path(state) / "logs"):
        yield lambda: Minio(f"127.0.0.1:{s3_port}", access_key=ACCESS_KEY, secret_key=secret_key, secure=False)


@pytest.fixture(scope="module")
def s3(new_client) -> Minio:
    return new_client()


@pytest.fixture
def bucket(s3) -> str:
    name = f"test-{uuid.uuid4().hex[:10]}"
    ensure_bucket(s3, name)
    return name


def test_an_absent_ref_reads_as_none_and_is_created_once(s3, bucket):
    assert read_ref(s3, bucket, "refs/a") is None
    etag = compare_and_swap_ref(s3, bucket, "refs/a", b"first", None)
    assert read_ref(s3, bucket, "refs/a") == (b"first", etag)
    with pytest.raises(RefConflict):
        compare_and_swap_ref(s3, bucket, "refs/a", b"second", None)
    assert read_ref(s3, bucket, "refs/a") == (b"first", etag)


def test_a_ref_is_replaced_only_from_the_etag_it_still_has(s3, bucket):
    first = compare_and_swap_ref(s3, bucket, "refs/b", b"1", None)
    second = compare_and_swap_ref(s3, bucket, "refs/b", b"2", first)
    assert second != first
    with pytest.raises(RefConflict):
        compare_and_swap_ref(s3, bucket, "refs/b", b"stale", first)
    assert read_ref(s3, bucket, "refs/b") == (b"2", second)


def test_replacing_an_absent_ref_is_a_conflict(s3, bucket):
    with pytest.raises(RefConflict):
        compare_and_swap_ref(s3, bucket, "refs/never-written", b"x", "d41d8cd98f00b204e9800998ecf8427e")


def test_of_eight_writers_creating_one_ref_at_once_exactly_one_wins(new_client, bucket):
    start = threading.Barrier(8)
    outcomes = []

    def create(client: Minio, writer: int) -> None:
        start.wait()
        try:
            compare_and_swap_ref(client, bucket, "refs/contested", f"writer {writer}".encode(), None)
            outcomes.append(("won", writer))
        except RefConflict:
            outcomes.append(("conflict", writer))

    threads = [threading.Thread(target=create, args=(new_client(), writer)) for writer in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [writer for outcome, writer in outcomes if outcome == "won"]
    assert len(outcomes) == 8 and len(winners) == 1, outcomes
    assert read_ref(new_client(), bucket, "refs/contested")[0] == f"writer {winners[0]}".encode()


def test_eight_writers_incrementing_one_counter_lose_no_increment(s3, new_client, bucket):
    writers, increments = 8, 15
    conflicts = []
    errors = []
    start = threading.Barrier(writers)

    def increment_n_times(client: Minio) -> None:
        start.wait()
        for _ in range(increments):
            while True:
                current = read_ref(client, bucket, "counter")
                value, etag = (int(current[0]), current[1]) if current else (0, None)
                try:
                    compare_and_swap_ref(client, bucket, "counter", str(value + 1).encode(), etag)
                    break
                except RefConflict:
                    conflicts.append(1)

    def run(client: Minio) -> None:
        try:
            increment_n_times(client)
        except Exception as exc:  # surfaced after join
            errors.append(exc)

    # One client per thread, as separate processes would have.
    threads = [threading.Thread(target=run, args=(new_client(),)) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    content, _ = read_ref(s3, bucket, "counter")
    assert int(content) == writers * increments
    assert conflicts, "the writers raced (else the test proves nothing)"


# --- verified objects ---------------------------------------------------------------------------------------------


def test_a_verified_object_round_trips_with_its_sha256(s3, bucket):
    ref = put_verified(s3, bucket, "items/a.bin", b"payload", content_type="image/jpeg", metadata={"camera": "c1"})
    assert ref.size == 7 and len(ref.sha256) == 64
    assert get_verified(s3, ref) == b"payload"
    # Without a sha256 in the reference, the one recorded at write time is the check.
    assert get_verified(s3, events_pb2.ObjectRef(bucket=bucket, key="items/a.bin")) == b"payload"
    stat = s3.stat_object(bucket, "items/a.bin")
    assert stat.content_type == "image/jpeg"
    assert stat.metadata["x-amz-meta-camera"] == "c1"


def test_bytes_that_changed_behind_the_reference_are_refused(s3, bucket):
    ref = put_verified(s3, bucket, "items/b.bin", b"original")
    s3.put_object(bucket, "items/b.bin", io.BytesIO(b"tampered"), 8, metadata={"sha256": ref.sha256})
    with pytest.raises(ObjectIntegrityError, match="does not match its sha256"):
        get_verified(s3, ref)
    with pytest.raises(ObjectIntegrityError, match="does not match its sha256"):
        get_verified(s3, events_pb2.ObjectRef(bucket=bucket, key="items/b.bin"))


def test_an_object_without_any_sha256_is_not_taken_as_verified(s3, bucket):
    s3.put_object(bucket, "items/plain.bin", io.BytesIO(b"x"), 1)
    with pytest.raises(ObjectIntegrityError, match="no sha256"):
        get_verified(s3, events_pb2.ObjectRef(bucket=bucket, key="items/plain.bin"))


def test_writing_if_absent_keeps_the_object_already_there(s3, bucket):
    put_verified(s3, bucket, "by-hash/k", b"first", if_absent=True)
    put_verified(s3, bucket, "by-hash/k", b"second", if_absent=True)
    assert get_verified(s3, events_pb2.ObjectRef(bucket=bucket, key="by-hash/k")) == b"first"


def test_a_staged_object_is_published_verified_and_leaves_no_staging_behind(s3, bucket):
    s3.put_object(bucket, "datasets/v1.json", io.BytesIO(b"old"), 3)
    ref = publish_staged(s3, bucket, "datasets/v1.json", b'{"items": 3}', content_type="application/json")
    assert ref.key == "datasets/v1.json"
    assert get_verified(s3, ref) == b'{"items": 3}'
    assert s3.stat_object(bucket, "datasets/v1.json").content_type == "application/json"
    assert list(s3.list_objects(bucket, prefix=STAGING_PREFIX, recursive=True)) == []


def test_staging_leftovers_expire(s3, bucket):
    s3.put_object(bucket, f"{STAGING_PREFIX}crashed/x", io.BytesIO(b"partial"), 7)
    assert remove_stale_staging(s3, bucket, older_than=timedelta(days=1)) == 0
    assert remove_stale_staging(s3, bucket, older_than=timedelta(seconds=-60)) == 1
    assert list(s3.list_objects(bucket, prefix=STAGING_PREFIX, recursive=True)) == []
    if expire_staging(s3, bucket, days=1):
        rules = s3.get_bucket_lifecycle(bucket).rules
        assert [(rule.rule_id, rule.rule_filter.prefix) for rule in rules] == [("expire-staging", STAGING_PREFIX)]


# --- the frame archive --------------------------------------------------------------------------------------------


@pytest.fixture
def archive(s3, bucket) -> FrameArchive:
    claim_check = ClaimCheckStore(s3, f"{bucket}-frames")
    claim_check.ensure_bucket()
    archive = FrameArchive(s3, f"{bucket}-archive", claim_check=claim_check)
    archive.ensure_bucket()
    # Versioning keeps every write as a version: "written once" is then one version.
    s3.set_bucket_versioning(archive.bucket, VersioningConfig(ENABLED))
    return archive


def versions_in(s3, bucket: str) -> list[str]:
    return [item.version_id for item in s3.list_objects(bucket, recursive=True, include_version=True)]


def test_an_inline_frame_archived_twice_is_written_once_under_its_sha256(s3, archive):
    frame = events_pb2.Frame(camera_id="c1", encoding="jpeg", data=b"\xff\xd8 jpeg bytes")
    ref = archive.archive_frame(frame)
    assert archive.archive_frame(frame) == ref
    assert ref.bucket == archive.bucket and ref.sha256 in ref.key and ref.size == len(frame.data)
    assert get_verified(s3, ref) == frame.data
    assert s3.stat_object(ref.bucket, ref.key).content_type == "image/jpeg"
    assert len(versions_in(s3, archive.bucket)) == 1
    assert s3.get_bucket_lifecycle(archive.bucket) is None, "archived frames never expire"


def test_a_claim_checked_frame_stays_archived_after_its_claim_check_is_gone(s3, archive):
    data = b"\xff\xd8" + bytes(range(256)) * 40
    frame = events_pb2.Frame(camera_id="c1", encoding="jpeg",
                             ref=archive.claim_check.put("frames/2026/11/28/c1/e1.jpg", data))
    ref = archive.archive_frame(frame)
    assert get_verified(s3, ref) == data
    # The same image inline, or its claim-check object expired: the same archived object, not a second one.
    assert archive.archive_frame(events_pb2.Frame(camera_id="c1", encoding="jpeg", data=data)) == ref
    s3.remove_object(frame.ref.bucket, frame.ref.key)
    assert archive.archive_frame(frame) == ref
    assert len(versions_in(s3, archive.bucket)) == 1


def test_a_claim_checked_frame_whose_bytes_changed_is_not_archived(s3, archive):
    ref = archive.claim_check.put("frames/2026/11/28/c1/e2.jpg", b"original")
    s3.put_object(ref.bucket, ref.key, io.BytesIO(b"tampered"), 8, metadata={"sha256": ref.sha256})
    with pytest.raises(ClaimCheckError, match="sha256"):
        archive.archive_frame(events_pb2.Frame(camera_id="c1", encoding="jpeg", ref=ref))
    assert versions_in(s3, archive.bucket) == []
