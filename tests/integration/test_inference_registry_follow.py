"""The inference service follows the model registry on a real stack (SeaweedFS, Kafka, the service): a version
promoted with `vigil models promote` is downloaded and hot-swapped in, and a rollback brings the previous one
back; gRPC ModelMetadata and the results on vigil.inference show the version serving."""
from __future__ import annotations

import io
import json
import shutil
import types

import cv2
import grpc
import numpy as np
import pytest

from cli.models import cmd_promote, cmd_rollback
from libs.common.envelope import new_envelope
from libs.common.objectstore import object_store_client
from libs.common.settings import ObjectStoreSettings
from libs.common.topics import FRAMES, INFERENCE, MODELS, MONITORING
from protos import events_pb2, inference_pb2, inference_pb2_grpc
from libs.model_registry.store import BUCKET, ModelRegistry
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import end_offsets, produce, read_range
from tests.integration.test_inference_grpc import inference_stack

pytestmark = pytest.mark.integration
NAME = "yolov3-tiny"


@pytest.fixture(scope="module")
def follow_stack(tmp_path_factory):
    # Reconciling every 2 s (and repairing what is older than that) keeps the lost-announcement test short.
    with inference_stack(tmp_path_factory.mktemp("inference-follow"),
                         {"VIGIL_INFERENCE_REGISTRY_RECONCILE_S": "2"}) as stack:
        yield stack


def served_version(stack) -> str:
    """ModelMetadata's version over gRPC (the project's stubs: tritonclient's protos clash with them in one
    process; test_inference_grpc covers tritonclient)."""
    with grpc.insecure_channel(f"127.0.0.1:{stack.config.ports.grpc}") as channel:
        stub = inference_pb2_grpc.GRPCInferenceServiceStub(channel)
        (version,) = stub.ModelMetadata(inference_pb2.ModelMetadataRequest(name=NAME), timeout=10).versions
        return version


def result_version(stack, sequence: int) -> str:
    """The model version on the result of one frame produced now."""
    bootstrap = stack.config.kafka_bootstrap
    start = end_offsets(bootstrap, INFERENCE)
    jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    frame = events_pb2.Frame(envelope=new_envelope("camera/cam-f", "test"), camera_id="cam-f", sequence=sequence,
                             width=64, height=48, encoding="jpeg", data=jpeg)
    produce(bootstrap, FRAMES, [(b"cam-f", frame.SerializeToString())])
    found = wait_for(lambda: read_range(bootstrap, INFERENCE, start, end_offsets(bootstrap, INFERENCE)), 60,
                     what="the frame's result")
    (result,) = [events_pb2.InferenceResult.FromString(m.value()) for m in found]
    return result.model.version


def registry_of(stack) -> ModelRegistry:
    settings = ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                   access_key=stack.config.s3_access_key, secret_key=stack.config.s3_secret_key)
    return ModelRegistry(object_store_client(settings), BUCKET)


def default_model_as(stack, dest, source_version: str) -> tuple[dict, object]:
    """A copy of the default model dir whose model.json names another version; (the original metadata, dir)."""
    from tools.darknet_converter import ensure_default_model

    shutil.copytree(ensure_default_model(stack.paths.cache), dest)
    metadata = json.loads((dest / "model.json").read_text())
    (dest / "model.json").write_text(json.dumps({**metadata, "version": source_version}))
    return metadata, dest


def test_a_promoted_version_is_hot_swapped_in_and_a_rollback_swaps_the_previous_back(follow_stack, tmp_path):
    from tools.darknet_converter import ensure_default_model

    stack = follow_stack
    registry = registry_of(stack)
    metadata, second = default_model_as(stack, tmp_path / "second", "2")
    assert metadata["name"] == NAME and metadata["version"] != "2"
    assert registry.import_dir(NAME, ensure_default_model(stack.paths.cache), "test")["version"] == 1
    assert registry.import_dir(NAME, second, "test")["version"] == 2
    assert served_version(stack) == metadata["version"] == result_version(stack, 0)

    # Version 1 (what serves already) is the primary first: nothing to swap; then version 2.
    assert cmd_promote(stack, types.SimpleNamespace(bucket=BUCKET, bootstrap=None, name=NAME, version=1)) == 0
    args = types.SimpleNamespace(bucket=BUCKET, bootstrap=None, name=NAME, version=2)
    assert cmd_promote(stack, args) == 0
    wait_for(lambda: served_version(stack) == "2", 120, what="version 2 serving over gRPC")
    assert result_version(stack, 1) == "2"
    assert (stack.paths.cache / "registry" / NAME / "2" / "manifest.json").is_file()  # downloaded, verified

    assert cmd_rollback(stack, args) == 0
    wait_for(lambda: served_version(stack) == metadata["version"], 120, what="version 1 serving again")
    assert result_version(stack, 2) == metadata["version"]

    # A version whose stored file was tampered with is refused on download: reported, version 1 keeps serving.
    (second / "model.json").write_text(json.dumps({**metadata, "version": "3"}))
    assert registry.import_dir(NAME, second, "test")["version"] == 3
    registry.client.put_object(BUCKET, f"{NAME}/3/model.bin", io.BytesIO(b"tampered"), 8)
    monitoring_start = end_offsets(stack.config.kafka_bootstrap, MONITORING)
    assert cmd_promote(stack, types.SimpleNamespace(bucket=BUCKET, bootstrap=None, name=NAME, version=3)) == 0

    def failed_status():
        events = [events_pb2.MonitoringEvent.FromString(m.value()) for m in read_range(
            stack.config.kafka_bootstrap, MONITORING, monitoring_start, end_offsets(stack.config.kafka_bootstrap,
                                                                                      MONITORING))]
        return [e.model_status for e in events if e.model_status.state == "failed"]

    (status,) = wait_for(failed_status, 60, what="a failed ModelStatus")
    assert status.model.name == NAME and "CorruptArtifact" in status.reason and "keeps serving" in status.reason
    assert served_version(stack) == metadata["version"] == result_version(stack, 3)


def test_a_promotion_recorded_but_never_announced_is_announced_and_served(follow_stack, tmp_path):
    """As if `vigil models promote` died between writing the store and announcing on vigil.models."""
    stack = follow_stack
    registry = registry_of(stack)
    _, lost = default_model_as(stack, tmp_path / "lost", "lost-1")
    version = registry.import_dir(NAME, lost, "test")["version"]
    models_start = end_offsets(stack.config.kafka_bootstrap, MODELS)
    registry.promote(NAME, version, "test")  # recorded; nobody announces it

    wait_for(lambda: served_version(stack) == "lost-1", 120, what="the unannounced primary serving")
    announced = [events_pb2.ModelVersion.FromString(m.value()) for m in read_range(
        stack.config.kafka_bootstrap, MODELS, models_start, end_offsets(stack.config.kafka_bootstrap, MODELS))]
    assert [(m.model.version, m.stage, m.metadata["action"]) for m in announced][:1] == [
        (str(version), "primary", "reconcile")]
