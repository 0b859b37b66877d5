"""The inference service: the default detector served over gRPC (Open Inference Protocol) and applied to
every frame event on vigil.frames."""
from __future__ import annotations

import threading

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
from services.inference.detectors import detector_loader
from services.inference.model_dirs import built, cache_dir_or_default, default_detector_dir
from services.inference.model_registry_follower import ModelRegistryFollower
from services.inference.sensors.kafka_adapter import start_sensor_path
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


def start_registry_follower(settings: InferenceSettings, kafka: KafkaSettings, server: ModelServer,
                            repository: PinnedRepository, runtime) -> threading.Thread | None:
    """When enabled (by default when the object store's secret is set): a thread that hot-swaps in each
    version of a served model that becomes primary in the model registry."""
    object_store = ObjectStoreSettings()
    follow = settings.follow_registry
    if follow is None:
        follow = object_store.secret_key is not None
    if not follow:
        return None
    follower = ModelRegistryFollower(
        kafka.client_config(), ModelRegistry(object_store_client(object_store), settings.registry_bucket), server,
        repository, settings.registry_cache_dir or cache_dir_or_default(None) / "registry",
        reconcile_s=settings.registry_reconcile_s)
    runtime.health.liveness["registry_follower"] = follower.heartbeat.check
    thread = threading.Thread(target=follower.run, args=(runtime.stop,), name="registry-follower", daemon=True)
    thread.start()
    return thread


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
    loader = detector_loader(settings.device, settings.precision_hint, settings.score_threshold)
    detector = loader(model_dir)
    repository = PinnedRepository(DirectoryRepository(settings.model_repository, loader, also=(model_dir,)), loader)
    announcer = DeliveringProducer(producer_config(kafka, client_id="inference-model-status"))
    server = ModelServer(detector, repository, settings.max_input_bytes, settings.camera_models,
                         on_status=model_status_announcer(announcer), canary_model=settings.canary_model,
                         canary_share=settings.canary_share, shadow_model=settings.shadow_model)
    extra_models = {*settings.camera_models.values(), settings.canary_model, settings.shadow_model}
    for name in sorted(extra_models - {detector.name, None}):
        server.load(name)  # a camera's model that cannot load stops the start: better than serving it wrongly
    grpc_server, grpc_port = start_grpc_server(server, settings.grpc_host, settings.grpc_port, settings.grpc_workers,
                                               settings.max_input_bytes, grpc_security(settings),
                                               settings.grpc_max_concurrent)
    server.warm_up()
    runtime.health.readiness["model_ready"] = flag_check(server.ready, f"model {detector.name} loaded and warm")
    log.info("serving", model=detector.name, version=detector.version, grpc=f"{settings.grpc_host}:{grpc_port}")
    follower_thread = start_registry_follower(settings, kafka, server, repository, runtime)
    sensor_path = start_sensor_path(settings, kafka, runtime)  # vigil.sensors -> vigil.inference.sensors, own thread

    try:
        if settings.consume:
            object_store = ObjectStoreSettings()
            claim_check = (ClaimCheckStore(object_store_client(object_store), bucket="vigil-frames")
                           if object_store.secret_key is not None else None)
            pipeline = FramePipeline(server.model_for_camera, max_frame_bytes=settings.max_input_bytes,
                                     claim_check=claim_check, shadow_for=server.shadow_for_camera)
            runner = KafkaRunner(
                kafka, service="inference", group_id="vigil-inference", topics=[FRAMES],
                handler=frame_batch_handler(pipeline),
                max_batch=settings.batch_max_frames, max_wait_s=settings.batch_max_wait_s,
            )
            runtime.health.liveness["consume_loop"] = runner.heartbeat.check
            try:
                runner.run(runtime.stop)
            finally:
                pipeline.close()
        else:
            runtime.stop.wait()
    finally:
        # Let in-flight gRPC calls finish, refuse new ones.
        grpc_server.stop(grace=settings.shutdown_timeout_s / 2).wait()
        runtime.stop.set()
        if follower_thread is not None:
            follower_thread.join(timeout=settings.shutdown_timeout_s / 2)
        if sensor_path is not None:
            sensor_path.join(timeout_s=settings.shutdown_timeout_s / 2)
        runtime.close()
    if sensor_path is not None:
        sensor_path.raise_if_failed()


if __name__ == "__main__":
    main()
