"""The inference service: the default detector served over gRPC (Open Inference Protocol) and applied to
every frame event on vigil.frames."""
from __future__ import annotations

import sys

from libs.common.claimcheck import ClaimCheckStore
from libs.common.objectstore import object_store_client
from libs.common.kafka import DeliveringProducer, KafkaRunner, producer_config
from libs.common.logs import get_logger
from libs.common.ops import flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import FRAMES, ensure_topics
from libs.model_registry.store import ModelRegistry
from services.inference.adapters.grpc_adapter import GrpcSecurity, start_grpc_server
from services.inference.adapters.kafka_adapter import frame_batch_handler, model_status_announcer
from services.inference.core.frame_pipeline import FramePipeline
from services.inference.core.model_repository import DirectoryRepository, PinnedRepository
from services.inference.core.model_server import ModelServer
from services.inference.core.shared_memory import SharedMemoryRegistry
from services.inference.detectors import detector_loader
from services.inference.model_dirs import built, cache_dir_or_default, default_detector_dir
from services.inference.model_registry_follower import ModelRegistryFollower
from services.inference.sensors.kafka_adapter import sensor_path_task
from services.inference.settings import InferenceSettings


def grpc_security(settings: InferenceSettings) -> GrpcSecurity:
    if bool(settings.grpc_tls_cert_file) != bool(settings.grpc_tls_key_file):
        raise ValueError("VIGIL_INFERENCE_GRPC_TLS_CERT_FILE and _KEY_FILE must be set together")
    return GrpcSecurity(
        tls_cert=settings.grpc_tls_cert_file.read_bytes() if settings.grpc_tls_cert_file else None,
        tls_key=settings.grpc_tls_key_file.read_bytes() if settings.grpc_tls_key_file else None,
        bearer_token=settings.grpc_auth_token.get_secret_value() if settings.grpc_auth_token else None,
        admin_token=settings.grpc_admin_token.get_secret_value() if settings.grpc_admin_token else None,
    )


def registry_follower(settings: InferenceSettings, kafka: KafkaSettings, server: ModelServer,
                      repository: PinnedRepository) -> ModelRegistryFollower | None:
    """When enabled (by default when the object store's secret is set): the follower that hot-swaps in each
    version of a served model that becomes primary in the model registry."""
    object_store = ObjectStoreSettings()
    follow = settings.follow_registry
    if follow is None:
        follow = object_store.secret_key is not None
    if not follow:
        return None
    return ModelRegistryFollower(
        kafka.client_config(), ModelRegistry(object_store_client(object_store), settings.registry_bucket), server,
        repository, settings.registry_cache_dir or cache_dir_or_default(None) / "registry",
        reconcile_s=settings.registry_reconcile_s)


def frame_pipeline(settings: InferenceSettings, server: ModelServer) -> FramePipeline:
    """vigil.frames -> vigil.inference (and vigil.inference.shadow), each frame to its camera's model."""
    object_store = ObjectStoreSettings()
    claim_check = (ClaimCheckStore(object_store_client(object_store), bucket="vigil-frames")
                   if object_store.secret_key is not None else None)
    return FramePipeline(server.model_for_camera, max_frame_bytes=settings.max_input_bytes,
                         claim_check=claim_check, shadow_for=server.shadow_for_camera)


def main() -> None:
    settings = InferenceSettings()
    kafka = KafkaSettings()
    runtime = start_service("inference", settings)
    log = get_logger()
    runtime.health.readiness["model_ready"] = lambda: (False, "loading")

    if (settings.consume or settings.consume_sensors) and kafka.create_topics:
        # Before any model status is announced, and before either consuming path starts.
        ensure_topics(kafka.client_config(), kafka.replication_factor)
    model_dir = built(settings.model_dir or default_detector_dir(), "default detector")
    loader = detector_loader(settings.device, settings.precision_hint, settings.score_threshold, settings.embeddings)
    detector = loader(model_dir)
    repository = PinnedRepository(DirectoryRepository(settings.model_repository, loader,
                                                      also=(model_dir, *settings.extra_model_dirs)), loader)
    announcer = DeliveringProducer(producer_config(kafka, client_id="inference-model-status"))
    runtime.on_stop("model status producer", lambda: announcer.flush(settings.shutdown_timeout_s / 4))
    server = ModelServer(detector, repository, settings.max_input_bytes, settings.camera_models,
                         on_status=model_status_announcer(announcer), canary_model=settings.canary_model,
                         canary_share=settings.canary_share, shadow_model=settings.shadow_model)
    extra_models = {*settings.camera_models.values(), settings.canary_model, settings.shadow_model,
                    *settings.preload_models}
    for name in sorted(extra_models - {detector.name, None}):
        server.load(name)  # a camera's model that cannot load stops the start: better than serving it wrongly
    shared_memory = SharedMemoryRegistry()
    # Registered before the gRPC server, so run after it: no call still reads a region when it is unmapped.
    runtime.on_stop("shared memory regions", shared_memory.close)
    grpc_server, grpc_port = start_grpc_server(server, settings.grpc_host, settings.grpc_port, settings.grpc_workers,
                                               settings.max_input_bytes, grpc_security(settings),
                                               settings.grpc_max_concurrent, shared_memory)
    # Registered first, so run last: in-flight gRPC calls finish after the loops have stopped, new ones are refused.
    runtime.on_stop("gRPC server", lambda: grpc_server.stop(grace=settings.shutdown_timeout_s / 2).wait())
    server.warm_up()
    runtime.health.readiness["model_ready"] = flag_check(server.ready, f"model {detector.name} loaded and warm")
    log.info("serving", model=detector.name, version=detector.version, grpc=f"{settings.grpc_host}:{grpc_port}")

    follower = registry_follower(settings, kafka, server, repository)
    if follower is not None:
        runtime.health.liveness["registry_follower"] = follower.heartbeat.check
        runtime.start_task("registry-follower", follower.run)
    sensor_path = sensor_path_task(settings, kafka, runtime.health)  # vigil.sensors -> vigil.inference.sensors
    if sensor_path is not None:
        runtime.start_task("sensor-path", sensor_path)
    if settings.consume:
        pipeline = frame_pipeline(settings, server)
        runtime.on_stop("frame pipeline", pipeline.close)
        runner = KafkaRunner(kafka, service="inference", group_id="vigil-inference", topics=[FRAMES],
                             handler=frame_batch_handler(pipeline), max_batch=settings.batch_max_frames,
                             max_wait_s=settings.batch_max_wait_s)
        runtime.health.liveness["consume_loop"] = runner.heartbeat.check
        runtime.start_task("frame-consumer", runner.run)
    sys.exit(runtime.run())


if __name__ == "__main__":
    main()
