"""Label schemas in a real SeaweedFS S3: a version is written once and never rewritten, the current ref moves by
compare-and-swap (replicas racing to publish the default agree), and a store started afresh reads what was
published."""
from __future__ import annotations

import threading

import pytest

from libs.common.objectstore import ensure_bucket
from services.annotation.schemas import (
    LabelSchema, SchemaStore, SchemaVersionExists, UnknownSchemaVersion, default_schema)
from tests.integration.infrastructure import object_store

pytestmark = pytest.mark.integration

BUCKET = "vigil-annotation"
DEFAULT = default_schema(["person", "bicycle", "car"], source_model="yolov3-tiny@1")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("schemas")) as client:
        ensure_bucket(client, BUCKET)
        yield client


def test_replicas_racing_to_publish_the_default_agree_on_one_current_version(s3):
    stores = [SchemaStore(s3, BUCKET) for _ in range(6)]
    results, errors = [], []

    def start(store: SchemaStore) -> None:
        try:
            results.append(store.ensure_current(DEFAULT, by="annotation"))
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert {r.version for r in results} == {"1"} and all(r.same_content(DEFAULT) for r in results)
    assert SchemaStore(s3, BUCKET).versions() == ["1"]
    assert SchemaStore(s3, BUCKET).current().published_by == "annotation"


def test_a_new_version_becomes_current_and_an_old_one_is_never_rewritten(s3):
    store = SchemaStore(s3, BUCKET)
    store.ensure_current(DEFAULT)
    second = LabelSchema(version=store.next_version(), classes=DEFAULT.classes + ("forklift",),
                         site_classes=("forklift",), min_box_px=8, rules_shown=("Only fully visible objects.",))
    assert second.version == "2"
    published = store.publish(second, by="ops")
    assert published.published_at and published.published_by == "ops"
    fresh = SchemaStore(s3, BUCKET)  # another replica, or a restart: nothing cached
    assert fresh.current_version() == "2"
    assert fresh.current().same_content(second)
    assert fresh.get("1").same_content(DEFAULT)
    # Rewriting version 1 with other content is refused, and version 1 is as it was.
    with pytest.raises(SchemaVersionExists):
        store.publish(LabelSchema(version="1", classes=("cat",)))
    assert SchemaStore(s3, BUCKET).get("1").classes == DEFAULT.classes
    assert fresh.current_version() == "2"
    # Publishing the same content again changes nothing; going back to version 1 is a move of the ref.
    store.publish(second)
    store.set_current("1")
    assert SchemaStore(s3, BUCKET).current().version == "1"
    with pytest.raises(UnknownSchemaVersion):
        store.set_current("7")
    assert SchemaStore(s3, BUCKET).versions() == ["1", "2"]
