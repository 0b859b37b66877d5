"""Single pieces of the real stack for tests that need only them: a SeaweedFS S3 or a Kafka broker, each on free
ports in a directory of its own, stopped when the block ends."""
from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Iterator

from minio import Minio

from cli.stack import kafka, objectstore
from cli.stack.component import StackPaths
from libs.common.cache_dir import default_cache_dir
from tests.integration.stack_process import free_ports, running

ACCESS_KEY = "vigil-test"


@contextlib.contextmanager
def object_store(state: Path, readers: tuple[objectstore.ReadOnlyIdentity, ...] = ()) -> Iterator[Minio]:
    """A client of a SeaweedFS S3 running for the block (`readers`: read-only identities beside its own)."""
    paths = StackPaths(state=state / "state", cache=default_cache_dir())
    secret_key = uuid.uuid4().hex
    s3_port, master_port, volume_port, filer_port = free_ports(4)
    spec = objectstore.spec(paths, s3_port=s3_port, master_port=master_port, volume_port=volume_port,
                            filer_port=filer_port, access_key=ACCESS_KEY, secret_key=secret_key, readers=readers)
    objectstore.install(paths.cache)
    with running(spec, state / "logs"):
        yield Minio(f"127.0.0.1:{s3_port}", access_key=ACCESS_KEY, secret_key=secret_key, secure=False)


@contextlib.contextmanager
def kafka_broker(state: Path) -> Iterator[str]:
    """The bootstrap address of a Kafka broker running for the block."""
    paths = StackPaths(state=state / "state", cache=default_cache_dir())
    kafka.install(paths.cache)
    port, controller_port = free_ports(2)
    with running(kafka.spec(paths, port=port, controller_port=controller_port), state / "kafka-logs"):
        yield f"127.0.0.1:{port}"
