"""Promotions racing each other against a real SeaweedFS (only the object store is started, for this module): the
promotion history is one small ref updated by compare-and-swap, so no promote or rollback is lost."""
from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import pytest

from libs.model_registry.history import current_primary
from libs.model_registry.store import ModelRegistry
from tests.integration.test_objectstore import new_client, s3  # noqa: F401 (fixtures: a SeaweedFS of its own)

pytestmark = pytest.mark.integration

WRITERS = 8


def tiny_model_dir(root: Path, version: int) -> Path:
    """Files the registry accepts as a converted model (it stores them; it never runs them)."""
    model_dir = root / f"v{version}"
    model_dir.mkdir()
    (model_dir / "model.xml").write_text(f"<net version='{version}'/>")
    (model_dir / "model.bin").write_bytes(bytes([version]) * 16)
    (model_dir / "model.json").write_text(json.dumps({"name": "racer", "version": str(version)}))
    return model_dir


def test_concurrent_promotions_lose_no_history_entry(s3, tmp_path):  # noqa: F811 (s3 is the imported fixture)
    registry = ModelRegistry(s3, f"models-{uuid.uuid4().hex[:8]}")
    versions = [registry.import_dir("racer", tiny_model_dir(tmp_path, v), "test")["version"]
                for v in range(1, WRITERS + 1)]
    start = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def promote(version: int) -> None:
        start.wait()
        try:
            registry.promote("racer", version, f"writer-{version}")
        except BaseException as exc:  # reported below, with the history
            errors.append(exc)

    threads = [threading.Thread(target=promote, args=(v,)) for v in versions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    history = registry.history("racer")
    assert not errors, errors
    assert sorted(entry["version"] for entry in history) == versions, history
    assert current_primary(history) == history[-1]["version"]


def test_a_rollback_racing_promotions_is_kept_with_them(s3, tmp_path):  # noqa: F811
    registry = ModelRegistry(s3, f"models-{uuid.uuid4().hex[:8]}")
    for v in range(1, 5):
        registry.import_dir("racer", tiny_model_dir(tmp_path, v), "test")
    registry.promote("racer", 1, "setup")
    registry.promote("racer", 2, "setup")
    start = threading.Barrier(3)

    def run(change) -> None:
        start.wait()
        change()

    threads = [threading.Thread(target=run, args=(change,)) for change in (
        lambda: registry.promote("racer", 3, "a"), lambda: registry.promote("racer", 4, "b"),
        lambda: registry.rollback("racer", "c"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    actions = sorted((entry["action"], entry["by"]) for entry in registry.history("racer"))
    assert actions == [("promote", "a"), ("promote", "b"), ("promote", "setup"), ("promote", "setup"),
                       ("rollback", "c")]
