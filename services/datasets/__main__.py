"""The datasets service: accepted labels of vigil.annotations appended to a dataset's working branch, a version
committed every N labels or T minutes or on request (POST /commit), each announced on vigil.datasets."""
from __future__ import annotations

import sys

from libs.common.kafka import KafkaRunner
from libs.common.objectstore import ensure_bucket, get_verified, object_store_client
from libs.common.ops import Heartbeat, flag_check
from libs.common.service import start_service
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import ANNOTATION_LABELS, ensure_topics
from services.datasets.http_api import start_commit_server
from services.datasets.kafka_adapter import LabelsAdapter
from services.datasets.labels_intake import CommitPolicy, LabelIntake
from services.datasets.manifest import check_name
from services.datasets.settings import DatasetsSettings
from services.datasets.store import DatasetStore


def main() -> None:
    settings = DatasetsSettings()
    kafka = KafkaSettings()
    object_store = ObjectStoreSettings()
    runtime = start_service("datasets", settings)
    if object_store.secret_key is None:
        raise SystemExit("datasets keeps its versions in the object store: set VIGIL_S3_SECRET_KEY")
    check_name(settings.dataset)
    check_name(settings.branch, "branch")
    if kafka.create_topics:
        ensure_topics(kafka.client_config(), kafka.replication_factor)
    client = object_store_client(object_store)
    ensure_bucket(client, settings.bucket)

    store = DatasetStore(client, settings.bucket, bucket_s=settings.split_group_s)
    intake = LabelIntake(store, lambda ref: get_verified(client, ref), settings.dataset, settings.branch,
                         CommitPolicy(settings.commit_every_labels, settings.commit_every_min * 60))
    adapter = LabelsAdapter(intake)
    token = settings.commit_token.get_secret_value() if settings.commit_token else None
    server = start_commit_server(intake, settings.commit_host, settings.commit_port, token)
    runtime.on_stop("commit endpoint", server.stop)

    runner = KafkaRunner(kafka, service="datasets", group_id="vigil-datasets", topics=[ANNOTATION_LABELS],
                         handler=adapter.handle_batch, checkpoint=adapter.checkpoint,
                         # A checkpoint follows every batch: batches no larger than N keep versions near N labels.
                         max_batch=min(settings.batch_max_events, settings.commit_every_labels),
                         max_wait_s=settings.batch_max_wait_s,
                         heartbeat=Heartbeat(max_age_s=120))
    runtime.health.liveness["consume_loop"] = runner.heartbeat.check
    runtime.health.readiness["kafka_assigned"] = flag_check(runner.assigned, "partitions assigned")
    runtime.start_task("labels", runner.run)
    sys.exit(runtime.run())


if __name__ == "__main__":
    main()
