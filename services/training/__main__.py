"""The training service: each committed dataset version announced on vigil.datasets (of a triggering dataset, with
enough labelled items, not trained yet) is trained on against the base model's champion, the candidate imported
into the model registry with its lineage, eligible or refused by the gate; progress and outcome on vigil.training."""
from __future__ import annotations

import json
import sys
from functools import partial

from libs.common.kafka import DeliveringProducer, KafkaRunner, producer_config
from libs.common.objectstore import object_store_client
from libs.common.ops import Heartbeat, flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import DATASETS, INFERENCE, INFERENCE_SHADOW, ensure_topics
from libs.model_registry.announcements import announcements_table
from libs.model_registry.store import ModelRegistry
from services.datasets.store import DatasetStore
from services.inference.model_dirs import DEFAULT_DETECTOR_NAME, built, default_detector_dir
from services.training.job import run_training
from services.training.kafka_adapter import DatasetVersionsAdapter
from services.training.rollout import RolloutJudge
from services.training.rollout_adapter import RolloutController
from services.training.settings import TrainingSettings
from services.training.triggers import TriggerPolicy

# Beaten at every progress step of a job as well as every consume: longer than any step without one (the
# champion's download, the fit).
LIVENESS_S = 600


def main() -> None:
    settings = TrainingSettings()
    kafka = KafkaSettings()
    object_store = ObjectStoreSettings()
    runtime = start_service("training", settings)
    if object_store.secret_key is None:
        raise SystemExit("training imports candidates into the model registry: set VIGIL_S3_SECRET_KEY")
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)
    client = object_store_client(object_store)
    registry = ModelRegistry(client, settings.registry_bucket)
    registry.ensure_bucket()
    reader = client
    if settings.datasets_read_access_key and settings.datasets_read_secret_key:
        reader = object_store_client(object_store.model_copy(update={
            "access_key": settings.datasets_read_access_key, "secret_key": settings.datasets_read_secret_key}))
    datasets = DatasetStore(reader, settings.datasets_bucket)
    # The served default detector stands for the champion while the registry has no primary of it.
    default_champion = (built(default_detector_dir(), "default detector")
                        if settings.base_model == DEFAULT_DETECTOR_NAME else None)
    work_dir = settings.resolved_work_dir()
    train = partial(_train, datasets, registry, settings, work_dir, default_champion)

    heartbeat = Heartbeat(max_age_s=LIVENESS_S)
    producer = DeliveringProducer(producer_config(kafka, client_id="training"))
    rollout = start_rollout(runtime, kafka, settings, registry, default_champion)
    adapter = DatasetVersionsAdapter(
        train, TriggerPolicy(frozenset(settings.datasets), settings.min_items, settings.max_age_h * 3600), registry,
        settings.base_model, settings.seed, publish=lambda out: (producer.produce(out), producer.poll(0)),
        stop=runtime.stop, beat=heartbeat.beat, progress_every_s=settings.progress_every_s,
        on_eligible=rollout.start_for if settings.rollout else None,
    )
    runner = KafkaRunner(kafka, service="training", group_id="vigil-training", topics=[DATASETS],
                         handler=adapter.handle_batch, producer=producer,
                         # One version at a time: its offset is committed once its job is over.
                         max_batch=1, max_wait_s=1.0, heartbeat=heartbeat,
                         # A job runs inside the poll loop: the group keeps the consumer that long.
                         consumer_overrides={"max.poll.interval.ms": int(settings.max_job_s * 1000)})
    runtime.health.liveness["consume_loop"] = runner.heartbeat.check
    runtime.health.readiness["kafka_assigned"] = flag_check(runner.assigned, "partitions assigned")
    runtime.start_task("dataset versions", runner.run)
    sys.exit(runtime.run())


def start_rollout(runtime, kafka: KafkaSettings, settings: TrainingSettings, registry: ModelRegistry,
                  default_champion) -> RolloutController:
    """The rollout controller's two tasks: the live results into its judge (read from their end: a stage is judged
    on the traffic since it began), and its clock, which follows the registry and takes the steps."""
    default_versions = {}
    if default_champion is not None:
        default_versions[settings.base_model] = str(json.loads((default_champion / "model.json").read_text())
                                                    .get("version", ""))
    controller = RolloutController(
        registry, announcements_table(kafka.client_config(), "vigil-training-rollout"),
        DeliveringProducer(producer_config(kafka, client_id="training-rollout")),
        RolloutJudge(settings.rollout_policy()), [settings.base_model], default_versions)
    results = KafkaRunner(kafka, service="training-rollout", group_id="vigil-training-rollout",
                          topics=[INFERENCE, INFERENCE_SHADOW], handler=controller.handle_batch, max_batch=500,
                          max_wait_s=0.2, consumer_overrides={"auto.offset.reset": "latest"})
    runtime.health.liveness["rollout_results"] = results.heartbeat.check
    runtime.start_task("rollout results", results.run)
    runtime.start_task("rollout", controller.run_ticks)
    return controller


def _train(datasets, registry, settings: TrainingSettings, work_dir, default_champion, dataset: str, version: str,
           progress):
    return run_training(datasets, registry, dataset, version, settings.base_model, settings.seed,
                        settings.params(), by="training", progress=progress, work_dir=work_dir / "jobs",
                        cache_dir=work_dir / "proposals", default_champion=default_champion)


if __name__ == "__main__":
    main()
