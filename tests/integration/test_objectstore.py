"""The object-store helpers against the real S3 of SeaweedFS (only the object store is started, on free ports, and
stopped at the end): refs updated by compare-and-swap stay exact under racing writers."""
from __future__ import annotations

import threading
import uuid
from pathlib import Path

import pytest
from minio import Minio

from cli.stack import objectstore as objectstore_component
from cli.stack.component import StackPaths, default_cache_dir
from libs.common.objectstore import RefConflict, compare_and_swap_ref, ensure_bucket, read_ref
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
