"""A training job's TrainingRun events, built from its progress and result (services/training/run_events.py), and
the adapter's handling of an announced version with the job stood in for: what it publishes, when it fails, when
it is interrupted, when it calls the rollout's hook."""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from libs.common.kafka import Retryable
from protos import events_pb2
from services.training.evaluation import EvaluationReport, GateDecision
from services.training.job import Champion, JobResult
from services.training.kafka_adapter import DatasetVersionsAdapter
from services.training.run_events import TrainingRunEvents, run_id
from services.training.trainer import TrainingResult
from services.training.triggers import TriggerPolicy

MODEL = "yolov3-tiny"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def job_result(eligible: bool = True, version: int = 3, champion_version: int | None = 2) -> JobResult:
    training = TrainingResult(Path("/nowhere"), EvaluationReport("candidate", 50, 0.71),
                              EvaluationReport("champion", 50, 0.64),
                              GateDecision(eligible, ("mAP@0.5 0.7100 beats 0.6400 by 0.0700",)), {})
    return JobResult(MODEL, version, eligible, training.decision.reasons, Champion(MODEL, champion_version,
                     Path("/nowhere")), "site", "abc123", training, {"precision": "fp32", "version": version})


def test_run_id_is_a_pure_function_of_dataset_version_model_and_seed():
    assert run_id("site", "abc", MODEL, 0) == run_id("site", "abc", MODEL, 0)
    assert len({run_id("site", "abc", MODEL, 0), run_id("site", "abd", MODEL, 0), run_id("site", "abc", "m", 0),
                run_id("site", "abc", MODEL, 1), run_id("other", "abc", MODEL, 0)}) == 5


def test_started_progress_and_outcome_carry_the_run_and_the_triggers_trace():
    clock = Clock()
    run = TrainingRunEvents("site", "abc123", MODEL, 0, trace_id="trace-1", clock=clock)
    started = run.started()
    clock.now += 2.5
    progress = run.progress("proposals", 25, 100, 6.0)
    clock.now += 4.0
    outcome = run.outcome(job_result())
    for event in (started, progress, outcome):
        assert (event.run_id, event.dataset, event.dataset_version, event.base_model) == (
            run.run_id, "site", "abc123", MODEL)
        assert event.envelope.trace_id == "trace-1" and event.envelope.source == f"model/{MODEL}"
    assert started.state == "started" and started.eta_s == -1.0
    assert (progress.state, progress.step, progress.done, progress.total, progress.eta_s, progress.elapsed_s) == (
        "progress", "proposals", 25, 100, 6.0, 2.5)
    assert outcome.state == "eligible" and outcome.elapsed_s == 6.5
    assert (outcome.candidate.name, outcome.candidate.version, outcome.candidate.precision) == (MODEL, "3", "fp32")
    assert (outcome.champion.name, outcome.champion.version) == (MODEL, "2")
    assert (outcome.candidate_map50, outcome.champion_map50) == (0.71, 0.64)
    assert list(outcome.reasons) == ["mAP@0.5 0.7100 beats 0.6400 by 0.0700"]


def test_a_refused_candidate_against_the_served_default_names_a_champion_without_registry_version():
    outcome = TrainingRunEvents("site", "abc123", MODEL, 0).outcome(job_result(eligible=False, champion_version=None))
    assert outcome.state == "refused" and outcome.champion.name == MODEL and outcome.champion.version == ""


def test_progress_is_at_most_one_event_a_second_per_step_and_always_each_steps_end():
    clock = Clock()
    run = TrainingRunEvents("site", "abc123", MODEL, 0, clock=clock)
    sent = []
    for done in range(1, 101):
        clock.now += 0.05  # 20 callbacks a second
        event = run.progress("proposals", done, 100, None)
        if event is not None:
            sent.append(event.done)
    assert sent[0] == 1 and sent[-1] == 100
    assert 5 <= len(sent) <= 7  # 5 s of work: about one a second, plus the end
    assert run.progress("fit", 1, 1, 0.0).step == "fit"  # another step is not throttled by the first
    assert run.progress("fit", 1, 1, 0.0) is not None  # an end always goes out


def test_a_failed_job_says_why():
    failed = TrainingRunEvents("site", "nope", MODEL, 0).failed("UnknownRef: no version nope of site")
    assert failed.state == "failed" and list(failed.reasons) == ["UnknownRef: no version nope of site"]
    assert not failed.HasField("candidate")


def test_an_earlier_versions_outcome_is_announced_again_as_the_same_event():
    run = TrainingRunEvents("site", "abc123", MODEL, 0)
    first = run.outcome(job_result(eligible=False, version=4, champion_version=1))
    manifest = {"name": MODEL, "version": 4, "precision": "fp32",
                "model_json": {"gate": {"eligible": False, "reasons": ["mAP@0.5 short of the margin"]},
                               "lineage": {"dataset": "site", "dataset_version": "abc123", "seed": 0,
                                           "champion": {"name": MODEL, "registry_version": 1},
                                           "metrics": {"candidate_map50": 0.71, "champion_map50": 0.64}}}}
    again = TrainingRunEvents("site", "abc123", MODEL, 0).already_trained(manifest)
    assert again.envelope.event_id == first.envelope.event_id  # downstream dedupes the repeat
    assert (again.state, again.candidate.version, again.champion.version, again.candidate_map50) == (
        "refused", "4", "1", 0.71)
    assert list(again.reasons) == ["mAP@0.5 short of the margin"] and again.elapsed_s == 0.0


# --- the adapter, its job stood in for ----------------------------------------------------------------------------

class EmptyRegistry:
    """A registry with no version of the model yet (what the dedupe reads)."""

    def versions(self, name: str) -> list[int]:
        return []


def committed(dataset: str = "site", version: str = "abc123", items: int = 120) -> events_pb2.DatasetVersion:
    event = events_pb2.DatasetVersion(dataset=dataset, version=version, action="commit", item_count=items)
    event.statistics["items"] = items
    event.envelope.trace_id = "trace-1"
    return event


def adapter(train, stop=None, on_eligible=None):
    published = []
    return DatasetVersionsAdapter(train, TriggerPolicy(min_items=40), EmptyRegistry(), MODEL, 0,
                                  publish=published.append, stop=stop or threading.Event(),
                                  on_eligible=on_eligible), published


def states(outbound) -> list[str]:
    return [events_pb2.TrainingRun.FromString(out.value).state for out in outbound]


def test_a_trained_version_publishes_started_progress_and_its_outcome_then_calls_the_rollouts_hook():
    eligible = []

    def train(dataset, version, progress):
        progress("champion", 1, 1, None)
        progress("proposals", 10, 10, 0.0)
        return job_result()

    handler, published = adapter(train, on_eligible=eligible.append)
    assert handler.handle(committed()) == []
    assert states(published) == ["started", "progress", "progress", "eligible"]
    assert all(out.key == MODEL.encode() and out.topic == "vigil.training" for out in published)
    assert [r.version for r in eligible] == [3]


def test_a_refused_candidate_does_not_start_a_rollout():
    eligible = []
    handler, published = adapter(lambda d, v, p: job_result(eligible=False), on_eligible=eligible.append)
    handler.handle(committed())
    assert states(published) == ["started", "refused"] and eligible == []


def test_a_failing_job_is_a_failed_event_not_a_crash():
    def train(dataset, version, progress):
        raise ValueError("site@abc123 needs train and test items (has train 3, val 0, test 0)")

    handler, published = adapter(train)
    outcome = handler.handle(committed())
    assert states(published) == ["started"] and states(outcome) == ["failed"]
    assert "needs train and test items" in events_pb2.TrainingRun.FromString(outcome[0].value).reasons[0]


def test_a_job_stops_at_its_next_step_when_the_service_stops_and_is_retried_not_committed():
    stop = threading.Event()

    def train(dataset, version, progress):
        progress("proposals", 25, 100, 3.0)
        stop.set()  # SIGTERM
        progress("proposals", 50, 100, 2.0)
        raise AssertionError("the job went on after the stop")

    handler, published = adapter(train, stop=stop)
    with pytest.raises(Retryable, match="stopped during proposals"):
        handler.handle(committed())


def test_versions_that_do_not_trigger_start_nothing():
    handler, published = adapter(lambda d, v, p: pytest.fail("trained"))
    assert handler.handle(committed(items=12)) == [] and published == []
