"""The annotation service's users against a real S3 (SeaweedFS, started for this module alone): tokens shown once
and stored only as digests, roles nested, removal and new tokens seen by another replica, concurrent adds all
kept."""
from __future__ import annotations

import json
import threading
import time
import uuid

import pytest
from minio import Minio

from libs.common.objectstore import ensure_bucket, read_ref
from services.annotation.web.users import USERS_KEY, UnknownUser, UserExists, UserStore, token_digest
from tests.integration.infrastructure import object_store

pytestmark = pytest.mark.integration

@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> Minio:
    with object_store(tmp_path_factory.mktemp("objectstore")) as client:
        yield client


@pytest.fixture
def bucket(s3) -> str:
    name = f"annotation-{uuid.uuid4().hex[:10]}"
    ensure_bucket(s3, name)
    return name


def test_a_token_is_stored_only_as_its_digest_and_verifies_its_user_with_nested_roles(s3, bucket):
    users = UserStore(s3, bucket)
    ana = users.add("ana", "annotator")
    rui = users.add("rui", "reviewer")
    eva = users.add("eva", "admin", by="cli/test")
    stored = read_ref(s3, bucket, USERS_KEY)[0]
    for token in (ana, rui, eva):
        assert len(token) >= 40
        assert token.encode() not in stored
        assert token_digest(token).encode() in stored
    assert users.verify(ana).roles == {"annotator"}
    assert users.verify(rui).roles == {"annotator", "reviewer"}
    assert users.verify(eva).roles == {"annotator", "reviewer", "admin"}
    assert users.verify(eva, name="eva").name == "eva"
    assert users.verify(eva, name="ana") is None, "a token signs in only as its own user"
    assert users.verify(ana + "x") is None
    assert users.verify("") is None
    assert [(u.name, u.role) for u in users.list()] == [("ana", "annotator"), ("eva", "admin"), ("rui", "reviewer")]
    assert users.list()[1].created_by == "cli/test"


def test_an_existing_name_is_refused_unless_replaced_and_the_old_token_then_stops(s3, bucket):
    users = UserStore(s3, bucket)
    first = users.add("ana", "annotator")
    with pytest.raises(UserExists):
        users.add("ana", "admin")
    second = users.add("ana", "reviewer", replace=True)
    assert users.verify(first) is None
    assert users.verify(second).role == "reviewer"
    with pytest.raises(ValueError):
        users.add("ana smith", "annotator")
    with pytest.raises(ValueError):
        users.add("bob", "owner")


def test_another_replica_sees_a_removal_within_its_reload_interval(s3, bucket):
    admin_side = UserStore(s3, bucket)
    token = admin_side.add("ana", "annotator")
    service = UserStore(s3, bucket, reload_s=0.5)
    user = service.verify(token)
    assert user is not None and service.holds("ana", token_digest(token))
    admin_side.remove("ana")
    with pytest.raises(UnknownUser):
        admin_side.remove("ana")
    assert service.verify(token) is not None, "still the copy read before the reload interval"
    time.sleep(0.6)
    assert service.verify(token) is None
    assert not service.holds("ana", token_digest(token))


def test_concurrent_adds_from_two_stores_all_land(s3, bucket):
    stores = [UserStore(s3, bucket), UserStore(s3, bucket)]
    tokens: dict[str, str] = {}

    def add(store: UserStore, names: list[str]) -> None:
        for name in names:
            tokens[name] = store.add(name, "annotator")

    threads = [threading.Thread(target=add, args=(store, [f"user-{i}-{n}" for n in range(6)]))
               for i, store in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    document = json.loads(read_ref(s3, bucket, USERS_KEY)[0])
    assert sorted(document["users"]) == sorted(tokens)
    fresh = UserStore(s3, bucket)
    assert all(fresh.verify(token).name == name for name, token in tokens.items())
