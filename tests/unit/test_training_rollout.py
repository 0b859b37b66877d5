"""The rollout's judge: a candidate that agrees with its champion on live frames moves shadow → canary → promoted;
one that disagrees, answers too slowly or not at all is rolled back, and the reason names the check and its figure."""
from __future__ import annotations

from protos import events_pb2
from services.inference.core.routing import in_canary
from services.training.rollout import (CANARY, PROMOTED, ROLLED_BACK, SHADOW, Rollout, RolloutJudge,
                                       RolloutPolicy, js_distance)

POLICY = RolloutPolicy(shadow_min_frames=20, shadow_min_s=10, canary_min_frames=20, canary_min_s=10,
                       pair_timeout_s=5, start_timeout_s=30, stage_timeout_s=100)
T0 = 1_800_000_000.0
PERSON = ("person", (10, 10, 50, 90))
CAR = ("car", (100, 100, 200, 160))


def result(version: str, frame: int, boxes=(PERSON,), infer_ms: float = 10.0, camera: str = "lobby",
           at: float | None = None) -> events_pb2.InferenceResult:
    message = events_pb2.InferenceResult(
        camera_id=camera, frame_event_id=f"{camera}-{frame}",
        model=events_pb2.ModelRef(name="yolo", version=version),
        detections=[events_pb2.Detection(label=label, score=0.9, box=events_pb2.Box(x1=b[0], y1=b[1], x2=b[2], y2=b[3]))
                    for label, b in boxes],
        stage_latency_ms={"infer": infer_ms, "postprocess": 1.0})
    message.envelope.event_time.FromNanoseconds(int((T0 + frame if at is None else at) * 1e9))
    return message


def judged(stage: str = SHADOW, share: float = 0.0) -> RolloutJudge:
    judge = RolloutJudge(POLICY)
    judge.track(Rollout("yolo", 2, candidate="v2", champion="v1", stage=stage, since=T0, share=share), "yolo")
    return judge


def feed(judge: RolloutJudge, frames: range, candidate_boxes=(PERSON,), candidate_ms: float = 10.0,
         camera: str = "lobby") -> None:
    for frame in frames:
        judge.observe(result("v1", frame, camera=camera), T0 + frame)
        judge.observe(result("v2", frame, candidate_boxes, candidate_ms, camera=camera), T0 + frame)


def test_a_candidate_that_agrees_passes_shadow_once_it_has_enough_frames_and_time():
    judge = judged()
    feed(judge, range(19))
    assert judge.decide(T0 + 19) == []  # 19 frames: not enough yet
    feed(judge, range(19, 25))
    [decision] = judge.decide(T0 + 25)
    assert decision.stage == CANARY and decision.checks["frames"] == 25
    assert decision.checks["disagreement"] == 0.0 and decision.checks["error_rate"] == 0.0


def test_a_passed_canary_is_promoted():
    judge = judged(CANARY, share=1.0)
    feed(judge, range(25))
    assert [d.stage for d in judge.decide(T0 + 25)] == [PROMOTED]


def test_a_candidate_that_sees_other_things_than_its_champion_is_rolled_back_with_the_figure():
    judge = judged()
    feed(judge, range(25), candidate_boxes=(CAR,))
    [decision] = judge.decide(T0 + 25)
    assert decision.stage == ROLLED_BACK
    assert "disagreement 1.00 > 0.50" in decision.reason and "output_drift" in decision.reason


def test_a_failing_check_rolls_back_without_waiting_out_the_stages_time():
    judge = judged()
    feed(judge, range(20), candidate_ms=40.0)  # four times the champion's latency
    [decision] = judge.decide(T0 + 1)
    assert decision.stage == ROLLED_BACK and "latency_ratio 3.73 > 2.00" in decision.reason


def test_frames_the_candidate_never_answered_are_errors():
    judge = judged()
    feed(judge, range(10))
    for frame in range(10, 30):
        judge.observe(result("v1", frame), T0 + frame)
    [decision] = judge.decide(T0 + 60)  # the lone halves are older than the pairing timeout
    assert decision.stage == ROLLED_BACK and decision.checks["error_rate"] == 20 / 30


def test_the_champions_frames_before_the_candidate_is_live_are_not_held_against_it():
    judge = judged()
    for frame in range(30):  # the candidate still loading on the servers
        judge.observe(result("v1", frame), T0 + frame)
    feed(judge, range(30, 55))
    [decision] = judge.decide(T0 + 100)
    assert decision.stage == CANARY and decision.checks["error_rate"] == 0.0


def test_a_candidate_that_never_answers_is_rolled_back_after_the_start_timeout():
    judge = judged()
    for frame in range(40):
        judge.observe(result("v1", frame), T0 + frame)
    assert judge.decide(T0 + 20) == []
    [decision] = judge.decide(T0 + 31)
    assert decision.stage == ROLLED_BACK and "gave no result" in decision.reason


def test_in_canary_only_the_canary_cameras_frames_are_paired():
    cameras = [f"cam{i}" for i in range(40)]
    inside = next(c for c in cameras if in_canary(c, 0.5))
    outside = next(c for c in cameras if not in_canary(c, 0.5))
    judge = judged(CANARY, share=0.5)
    feed(judge, range(25), camera=inside)
    for frame in range(25):  # the champion alone serves the other cameras: nothing missing
        judge.observe(result("v1", frame, camera=outside), T0 + frame)
    [decision] = judge.decide(T0 + 60)
    assert decision.stage == PROMOTED and decision.checks["frames"] == 25 and decision.checks["error_rate"] == 0


def test_results_of_other_versions_and_from_before_the_stage_are_ignored():
    judge = judged()
    judge.observe(result("v0", 1), T0 + 1)
    judge.observe(result("v1", 2, at=T0 - 5), T0)
    judge.observe(result("v2", 2, at=T0 - 5), T0)
    assert judge.checks["yolo"].pairs == 0 and not judge._pending


def test_a_new_stage_starts_its_checks_afresh():
    judge = judged()
    feed(judge, range(25))
    judge.track(Rollout("yolo", 2, "v2", "v1", CANARY, since=T0 + 30, share=1.0), "yolo")
    assert judge.checks["yolo"].pairs == 0


def test_js_distance_is_zero_for_the_same_mix_and_one_for_disjoint_mixes():
    assert js_distance({"person": 4, "car": 2}, {"person": 2, "car": 1}) == 0.0
    assert abs(js_distance({"person": 3}, {"car": 3}) - 1.0) < 1e-9
