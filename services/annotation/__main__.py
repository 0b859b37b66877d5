"""The annotation service: frames worth a human look chosen from vigil.inference (and .shadow, and drift alerts on
vigil.monitoring), queued durably, labelled in the browser, labels out on vigil.annotations."""
from __future__ import annotations

import sys

from libs.common.claimcheck import ClaimCheckStore
from libs.common.kafka import KafkaRunner
from libs.common.logs import get_logger
from libs.common.objectstore import ensure_bucket, object_store_client
from libs.common.ops import flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import INFERENCE, INFERENCE_SHADOW, ensure_topics
from services.annotation.camera_privacy import CameraPrivacy
from services.annotation.drift_alerts import DriftAlertFollower
from services.annotation.exports import Exports
from libs.common.faces import FaceBlurrer
from services.annotation.frames import FrameFetcher
from services.annotation.intake import AnnotationIntake, IntakePolicy
from services.annotation.queue import AnnotationQueue
from services.annotation.schemas import SchemaStore, default_schema, model_dir_labels
from services.annotation.selection import SelectionPolicy, Selector
from services.annotation.settings import AnnotationSettings
from services.annotation.web.api import AnnotationApi, AnnotationWeb
from services.annotation.web.users import UserStore


def selection_policy(settings: AnnotationSettings) -> SelectionPolicy:
    return SelectionPolicy(
        uncertain_low=settings.uncertainty_low, uncertain_high=settings.uncertainty_high,
        rare_class_share=settings.rare_class_share, drift_sample_rate=settings.drift_sample_rate,
        audit_share=settings.audit_share, camera_budget_per_hour=settings.camera_budget_per_hour,
        total_budget_per_hour=settings.total_budget_per_hour,
        near_duplicate_distance=settings.duplicate_distance, near_duplicate_cooldown_s=settings.duplicate_cooldown_s)


def ensure_schema(schemas: SchemaStore, settings: AnnotationSettings) -> None:
    """A first start publishes version 1: the default model's labels plus the site's classes."""
    if schemas.current_version() is not None:
        return
    from services.inference.model_dirs import default_detector_dir
    labels = model_dir_labels(default_detector_dir())
    rules = {"rules_shown": tuple(settings.rules)} if settings.rules else {}
    schemas.ensure_current(default_schema(labels, settings.site_classes, **rules), by="annotation (first start)")


def main() -> None:
    settings = AnnotationSettings()
    kafka = KafkaSettings()
    object_store = ObjectStoreSettings()
    runtime = start_service("annotation", settings)
    log = get_logger()
    if object_store.secret_key is None:
        raise SystemExit("annotation keeps its tasks and images in the object store: set VIGIL_S3_SECRET_KEY")
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)
    client = object_store_client(object_store)
    ensure_bucket(client, settings.bucket)
    schemas = SchemaStore(client, settings.bucket)
    ensure_schema(schemas, settings)

    queue = AnnotationQueue(client, settings.bucket, kafka, schemas=schemas, lease_s=settings.lease_s,
                            double_label_share=settings.double_label_share)
    runtime.health.readiness["queue_loaded"] = queue.ready
    runtime.start_task("task-follower", queue.follow)
    runtime.on_stop("queue", queue.close)

    users = UserStore(client, settings.bucket)
    api = AnnotationApi(queue, users, schemas, exports=Exports(queue, schemas))
    web = AnnotationWeb(api, settings.ui_host, settings.ui_port).start()
    runtime.on_stop("review UI", web.stop)
    log.info("review UI listening", url=f"http://{settings.ui_host}:{web.port}/")

    selector = Selector(selection_policy(settings))
    privacy = CameraPrivacy(kafka.client_config())
    runtime.start_task("camera-privacy", privacy.run)
    runtime.health.readiness["camera_registry"] = privacy.ready
    frames = FrameFetcher(kafka.client_config(), settings.frame_search_s,
                          claim_check=ClaimCheckStore(client, settings.claim_check_bucket))
    runtime.on_stop("frame search", frames.close)
    token = settings.inference_token.get_secret_value() if settings.inference_token else None
    blurrer = FaceBlurrer(settings.inference_grpc, settings.face_model, settings.face_min_score, token=token) \
        if settings.blur_faces else None
    intake = AnnotationIntake(selector, frames, queue, blurrer,
                              IntakePolicy(settings.double_label_share, settings.blur_faces),
                              schema_version=lambda: schemas.current_version() or "1",
                              blur_opted_out=privacy.opted_out)
    # Budgets and recent picks survive a restart: the last hour's tasks are charged again before intake starts.
    if not runtime.wait_until(queue.loaded, settings.shutdown_timeout_s * 6):
        if runtime.stop.is_set():  # told to stop while starting
            sys.exit(runtime.run())
        raise SystemExit("the task topic could not be read to its end; not starting the intake")
    for task in queue.tasks(limit=None):
        selector.restore(task.camera_id, task.envelope.event_time.seconds, task.perceptual_hash or None,
                         rule=task.reason)
    alerts = DriftAlertFollower(kafka.client_config(), lambda camera, raised, at: _note(intake, camera, raised, at),
                                lookback_s=settings.drift_lookback_h * 3600)
    runtime.start_task("drift-alerts", alerts.run)
    runtime.health.readiness["drift_alerts"] = alerts.ready

    runner = KafkaRunner(kafka, service="annotation", group_id="vigil-annotation",
                         topics=[INFERENCE, INFERENCE_SHADOW], handler=intake.handle_batch,
                         max_batch=settings.batch_max_events, max_wait_s=settings.batch_max_wait_s)
    runtime.health.liveness["consume_loop"] = runner.heartbeat.check
    runtime.health.readiness["kafka_assigned"] = flag_check(runner.assigned, "partitions assigned")
    runtime.start_task("intake", runner.run)
    sys.exit(runtime.run())


def _note(intake: AnnotationIntake, camera_id: str, raised: bool, at: float) -> None:
    with intake.lock:
        intake.selector.note_drift(camera_id, raised, at)


if __name__ == "__main__":
    main()
