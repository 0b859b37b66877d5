"""The training service on the real stack: a site's dataset version (tests/integration/site_footage.py) committed
into the stack's dataset store and announced on vigil.datasets is trained on by the stack's own training service:
vigil.training shows the run started, its progress, and the candidate eligible; the candidate is in the stack's
registry with its lineage, not promoted. The same announcement read again trains nothing (the registry already
holds the version's candidate) and only announces the outcome again; an announced version that does not exist
is a failed run, and the service goes on."""
from __future__ import annotations

import pytest

from libs.common.envelope import new_envelope
from libs.common.objectstore import ensure_bucket, object_store_client
from libs.common.settings import ObjectStoreSettings
from libs.common.topics import DATASETS, TRAINING
from libs.model_registry.store import ModelRegistry
from protos import events_pb2
from services.datasets.events import dataset_event
from services.training.run_events import run_id
from services.training.settings import TrainingSettings
from tests.integration.conftest import wait_for
from tests.integration.kafka_tools import TopicRecorder, produce
from tests.integration.site_footage import DATASET
from tests.integration.site_footage import base_dir, store, version  # noqa: F401 (fixtures)

pytestmark = pytest.mark.integration

SETTINGS = TrainingSettings()  # the stack's service runs with the defaults
MODEL, SEED = SETTINGS.base_model, SETTINGS.seed
MISSING = "training-test-missing"  # a dataset of this test's alone: nothing else on the stack reads it
JOB_TIMEOUT_S = 600  # the detector over ~270 images on 2 shared cores when no proposal is cached yet


@pytest.fixture(scope="module")
def s3(stack):
    """The stack's own S3 (site_footage's fixtures commit into it instead of a lone one), with the writer's keys:
    the stack's training service reads the version there with the datasets' read-only keys."""
    client = object_store_client(ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                                     access_key=stack.config.s3_access_key,
                                                     secret_key=stack.config.s3_secret_key))
    ensure_bucket(client, SETTINGS.datasets_bucket)
    return client


@pytest.fixture(scope="module")
def registry(s3) -> ModelRegistry:
    return ModelRegistry(s3, SETTINGS.registry_bucket)


def announce(stack, event: events_pb2.DatasetVersion) -> None:
    produce(stack.config.kafka_bootstrap, DATASETS, [(event.dataset.encode(), event.SerializeToString())])


def runs(recorder: TopicRecorder, run: str) -> list[events_pb2.TrainingRun]:
    events = [events_pb2.TrainingRun.FromString(value) for _, _, value in recorder.since(0)]
    return [event for event in events if event.run_id == run]


def outcome_of(recorder: TopicRecorder, run: str, count: int = 1) -> list[events_pb2.TrainingRun]:
    outcomes = [e for e in runs(recorder, run) if e.state in ("eligible", "refused", "failed")]
    return outcomes if len(outcomes) >= count else []


def versions_trained_on(registry: ModelRegistry, dataset_version: str) -> list[int]:
    return [v for v in registry.versions(MODEL) if (registry.manifest(MODEL, v)["lineage"]["derived_from"] or {})
            .get("dataset_version") == dataset_version] if MODEL in registry.models() else []


@pytest.fixture(scope="module")
def announced(stack, store, version, registry):
    """The version's commit announced once, as the datasets service announces its own; what vigil.training said."""
    manifest = store.version(DATASET, version)
    event = dataset_event(manifest, "commit", "test", branch="main", manifest_ref=store.manifest_ref(manifest))
    primary = registry.primary(MODEL) if MODEL in registry.models() else None
    recorder = TopicRecorder(stack.config.kafka_bootstrap, TRAINING)
    announce(stack, event)
    run = run_id(DATASET, version, MODEL, SEED)
    wait_for(lambda: outcome_of(recorder, run), JOB_TIMEOUT_S, interval_s=2, what=f"the outcome of run {run}")
    yield event, recorder, run, primary
    recorder.stop()
    # The stack's rollout controller (training's on_eligible) put the eligible candidate into shadow: ended here,
    # so that the session's later tests find no rollout of the model in progress.
    outcome = outcome_of(recorder, run)
    rollout = registry.rollout(MODEL)
    if outcome and rollout is not None and rollout.version == int(outcome[0].candidate.version):
        print(f"ending the rollout of {MODEL}:{rollout.version} ({rollout.stage})")
        registry.end_rollout(MODEL, by="test", reason="test_training_service is over")


def test_an_announced_version_is_trained_with_progress_and_its_candidate_registered_with_lineage(
        announced, registry, version):
    _, recorder, run, primary = announced
    events = runs(recorder, run)
    for e in events:
        print(f"{e.state:9} {e.step:11} {e.done:4}/{e.total:<4} eta {e.eta_s:6.1f} elapsed {e.elapsed_s:6.1f}")
    states = [e.state for e in events]
    assert states[0] == "started" and states[-1] == "eligible", states
    assert states.count("started") == 1 and states.count("eligible") == 1
    progress = [e for e in events if e.state == "progress"]
    assert {"champion", "proposals", "fit", "evaluation", "import"} <= {e.step for e in progress}
    assert all(0 < e.done <= e.total for e in progress)
    assert all(e.dataset == DATASET and e.dataset_version == version and e.base_model == MODEL for e in events)
    assert [e.elapsed_s for e in events] == sorted(e.elapsed_s for e in events)

    outcome = events[-1]
    print(f"candidate {outcome.candidate.name}:{outcome.candidate.version} mAP@0.5 {outcome.candidate_map50:.4f}, "
          f"champion {outcome.champion.name}:{outcome.champion.version or '(default dir)'} "
          f"{outcome.champion_map50:.4f}, {outcome.elapsed_s:.1f} s")
    assert outcome.candidate_map50 > outcome.champion_map50 and outcome.champion.name == MODEL
    manifest = registry.manifest(MODEL, int(outcome.candidate.version))
    trained = manifest["lineage"]["derived_from"]
    assert (trained["dataset"], trained["dataset_version"], trained["seed"]) == (DATASET, version, SEED)
    assert trained["metrics"]["candidate_map50"] == pytest.approx(outcome.candidate_map50)
    assert manifest["lineage"]["imported_by"] == "training"
    assert manifest["model_json"]["gate"]["eligible"] is True
    assert registry.primary(MODEL) == primary  # registered, not promoted


def test_the_same_announcement_read_again_trains_nothing_and_announces_the_outcome_again(
        stack, announced, registry, version):
    event, recorder, run, _ = announced
    before = versions_trained_on(registry, version)
    assert len(before) == 1
    announce(stack, event)
    again = wait_for(lambda: outcome_of(recorder, run, count=2), 120, interval_s=1,
                     what="the outcome announced again")
    assert again[1].envelope.event_id == again[0].envelope.event_id  # the same event: downstream dedupes it
    assert again[1].candidate == again[0].candidate and again[1].state == "eligible"
    assert [e.state for e in runs(recorder, run)].count("started") == 1
    assert versions_trained_on(registry, version) == before
    assert "already trained" in stack.supervisor.log_tail("training", 50)


def test_an_announced_version_that_does_not_exist_is_a_failed_run_and_the_service_goes_on(stack, announced):
    _, recorder, _, _ = announced
    pid = stack.supervisor.running_pid("training")
    missing = events_pb2.DatasetVersion(envelope=new_envelope(f"datasets/{MISSING}", "test"), dataset=MISSING,
                                        version="0123456789abcdef", action="commit", item_count=100,
                                        statistics={"items": 100})
    announce(stack, missing)
    run = run_id(MISSING, missing.version, MODEL, SEED)
    failed = wait_for(lambda: outcome_of(recorder, run), 120, interval_s=1, what="the failed run")[0]
    assert failed.state == "failed" and "0123456789abcdef" in failed.reasons[0], failed.reasons
    assert [e.state for e in runs(recorder, run)] == ["started", "failed"]
    assert stack.supervisor.running_pid("training") == pid
