"""The inference service: the default detector served over gRPC (Open Inference Protocol) and applied to
every frame event on vigil.frames."""
from __future__ import annotations

from libs.common.kafka import KafkaRunner
from libs.common.logs import get_logger
from libs.common.ops import flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings
from libs.common.topics import FRAMES, ensure_topics
from services.inference.detector import YoloDetector, ensure_default_model
from services.inference.grpc_adapter import start_grpc_server
from services.inference.kafka_adapter import frame_batch_handler
from services.inference.pipeline import FramePipeline
from services.inference.serving import ModelServer
from services.inference.settings import InferenceSettings


def main() -> None:
    settings = InferenceSettings()
    kafka = KafkaSettings()
    runtime = start_service("inference", settings)
    log = get_logger()
    runtime.health.readiness["model_ready"] = lambda: (False, "loading")

    model_dir = settings.model_dir or ensure_default_model()
    detector = YoloDetector.load(model_dir, settings.device, settings.precision_hint, settings.score_threshold)
    server = ModelServer(detector)
    grpc_server, grpc_port = start_grpc_server(server, settings.grpc_host, settings.grpc_port, settings.grpc_workers,
                                               settings.max_input_bytes)
    server.warm_up()
    runtime.health.readiness["model_ready"] = flag_check(server.ready, f"model {detector.name} loaded and warm")
    log.info("serving", model=detector.name, version=detector.version, grpc=f"{settings.grpc_host}:{grpc_port}")

    try:
        if settings.consume:
            if kafka.create_topics:
                ensure_topics(kafka.client_config(), kafka.replication_factor)
            pipeline = FramePipeline(detector, max_frame_bytes=settings.max_input_bytes)
            runner = KafkaRunner(
                kafka, service="inference", group_id="vigil-inference", topics=[FRAMES],
                handler=frame_batch_handler(pipeline),
                max_batch=settings.batch_max_frames, max_wait_s=settings.batch_max_wait_s,
            )
            runtime.health.liveness["consume_loop"] = runner.heartbeat.check
            runner.run(runtime.stop)
        else:
            runtime.stop.wait()
    finally:
        # Let in-flight gRPC calls finish, refuse new ones.
        grpc_server.stop(grace=settings.shutdown_timeout_s / 2).wait()
        runtime.close()


if __name__ == "__main__":
    main()
