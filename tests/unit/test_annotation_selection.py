"""Selection of frames for annotation (services/annotation/selection.py, near_duplicates.py), offline: each rule
picks what it should and says so, the priority order holds, budgets per camera and overall hold (a flood of
10,000 low-confidence results from one camera yields at most the camera's budget), replays decide the same way,
and near-duplicates (by a real perceptual hash of real JPEGs) are refused."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from bench.common import sample_frames
from libs.common.cache_dir import default_cache_dir
from services.annotation.near_duplicates import RecentHashes, hash_bits, perceptual_hash
from services.annotation.selection import (
    HOUR_S, RULES, Candidate, Proposal, SelectionPolicy, Selector, draw)

T0 = 1_800_000_000.0
POLICY = SelectionPolicy()


def result(frame_event_id: str, *detections: tuple[str, float], camera: str = "cam-1", t: float = T0,
           model: str = "yolov3-tiny", boxes: list | None = None) -> Candidate:
    proposals = tuple(Proposal(label, score, boxes[i] if boxes else (10.0 + 50 * i, 10.0, 50.0 + 50 * i, 90.0))
                      for i, (label, score) in enumerate(detections))
    return Candidate(camera, frame_event_id, t, model, "1", 768, 576, proposals)


def ids_not_drawn(count: int, salt: str = "audit", share: float = POLICY.audit_share, prefix: str = "f") -> list[str]:
    """Frame ids outside the random draw of a rule, so the test sees only the rule it means to."""
    return [i for i in (f"{prefix}-{n}" for n in range(count * 2)) if draw(i, salt) >= share][:count]


def scene(seed: int, quality: int = 90) -> bytes:
    """A distinct synthetic scene: coarse random blocks (pHash tells such scenes apart by ~32 bits of 64)."""
    blocks = np.random.default_rng(seed).integers(0, 256, (9, 12, 3), dtype=np.uint8)
    image = cv2.resize(blocks, (768, 576), interpolation=cv2.INTER_CUBIC)
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


@pytest.fixture(scope="module")
def demo_frames() -> list[np.ndarray]:
    """The demo footage (real pedestrian CCTV, a static camera) when the asset cache holds it; never downloaded."""
    found = list((default_cache_dir() / "assets" / "opencv-samples").glob("**/vtest.avi"))
    if not found:
        pytest.skip("the demo footage is not in the asset cache (tools/fetch_assets.py fetches it)")
    return sample_frames(found[0], 10_000)  # all of it: 795 frames


def jpeg(image: np.ndarray, quality: int = 85) -> bytes:
    return cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])[1].tobytes()


# --- each rule ----------------------------------------------------------------------------------------------------

def test_a_score_inside_the_uncertainty_band_is_selected_as_uncertain_and_says_so():
    selector = Selector(POLICY)
    fid = ids_not_drawn(1)[0]
    selection = selector.consider(result(fid, ("person", 0.92), ("car", 0.41)), T0)
    assert selection.rule == "uncertain"
    assert selection.detail == "car score 0.41 in the band [0.25, 0.60]"
    assert selection.candidate.frame_event_id == fid


def test_confident_results_of_common_classes_are_not_selected():
    selector = Selector(POLICY)
    chosen = [selector.consider(result(fid, ("person", 0.9), ("person", 0.8)), T0) for fid in ids_not_drawn(500)]
    assert chosen == [None] * 500


def test_within_uncertain_a_score_nearer_the_middle_of_the_band_ranks_higher():
    selector = Selector(POLICY)
    middle, near_edge = (selector.consider(result(fid, ("person", score)), T0)
                         for fid, score in zip(ids_not_drawn(2), (0.43, 0.27)))
    assert middle.priority > near_edge.priority


@pytest.mark.parametrize("shadow_first", [False, True])
def test_a_box_only_one_model_finds_is_a_shadow_disagreement_for_the_primary_result(shadow_first):
    selector = Selector(POLICY)
    boxes = [(10.0, 10.0, 60.0, 120.0), (300.0, 200.0, 360.0, 320.0)]
    primary = result("frame-1", ("person", 0.9), ("person", 0.85), boxes=boxes)
    shadow = result("frame-1", ("person", 0.88), model="yolov8n", boxes=boxes[:1])
    if shadow_first:
        assert selector.offer_shadow(shadow, T0) is None
        selection = selector.consider(primary, T0 + 0.1)
    else:
        selector.consider(primary, T0)
        selection = selector.offer_shadow(shadow, T0 + 0.1)
    assert selection.rule == "shadow_disagreement"
    assert "person 0.85 only in primary" in selection.detail and "yolov8n" in selection.detail
    assert selection.candidate == primary


def test_matched_boxes_of_different_classes_disagree_and_agreeing_models_do_not():
    selector = Selector(POLICY)
    primary = result("frame-2", ("person", 0.9))
    moved = dataclasses.replace(primary.proposals[0], box=(12.0, 11.0, 52.0, 92.0), label="bicycle")
    selector.consider(primary, T0)
    selection = selector.offer_shadow(dataclasses.replace(primary, model_name="shadow", proposals=(moved,)), T0)
    assert selection.rule == "shadow_disagreement" and "primary person vs shadow bicycle" in selection.detail

    agreeing = result("frame-3", ("person", 0.9))
    selector.consider(agreeing, T0)
    same = dataclasses.replace(agreeing.proposals[0], box=(12.0, 11.0, 52.0, 92.0), score=0.7)
    assert selector.offer_shadow(dataclasses.replace(agreeing, model_name="shadow", proposals=(same,)), T0) is None


def test_a_class_below_its_share_of_the_cameras_recent_detections_is_rare():
    selector = Selector(POLICY)
    fids = ids_not_drawn(41)
    # 20 people seen: too few for anything to be rare yet, so the first dog is not.
    for fid in fids[:20]:
        selector.consider(result(fid, ("person", 0.9)), T0)
    assert selector.consider(result(fids[20], ("dog", 0.9)), T0) is None
    for fid in fids[21:40]:
        selector.consider(result(fid, ("person", 0.9), ("person", 0.8), ("car", 0.9)), T0)
    selection = selector.consider(result(fids[40], ("person", 0.9), ("dog", 0.95)), T0)
    assert selection.rule == "rare_class"
    assert selection.detail == "dog is 1.3% of the camera's last 78 detections (below 5%)"


def test_a_camera_under_a_drift_alert_is_sampled_at_the_drift_rate_until_the_alert_clears():
    selector = Selector(dataclasses.replace(POLICY, camera_budget_per_hour=100_000, total_budget_per_hour=100_000,
                                            budget_burst_share=1.0, drift_budget_share=1.0))
    fids = ids_not_drawn(2000)
    assert [selector.consider(result(fid, ("person", 0.9)), T0) for fid in fids[:200]] == [None] * 200
    selector.note_drift("cam-1", True, T0)
    chosen = [selector.consider(result(fid, ("person", 0.9)), T0) for fid in fids]
    drift = [s for s in chosen if s is not None]
    assert {s.rule for s in drift} == {"drift"}
    assert 0.17 < len(drift) / len(fids) < 0.23
    assert drift[0].detail == "camera under a drift alert (input), sampled at 20%"
    assert selector.consider(result(fids[0], ("person", 0.9), camera="cam-2"), T0) is None  # another camera
    selector.note_drift("cam-1", False, T0 + 60)
    assert [selector.consider(result(fid, ("person", 0.9)), T0) for fid in fids[:200]] == [None] * 200


def test_the_audit_draws_its_share_of_all_results_and_marks_those_a_higher_rule_chose():
    selector = Selector(dataclasses.replace(POLICY, camera_budget_per_hour=100_000, total_budget_per_hour=100_000,
                                            budget_burst_share=1.0, audit_budget_share=1.0))
    confident = [selector.consider(result(f"c-{n}", ("person", 0.9)), T0) for n in range(20_000)]
    audited = [s for s in confident if s is not None]
    assert {s.rule for s in audited} == {"audit"} and all(s.audit for s in audited)
    assert 0.008 < len(audited) / 20_000 < 0.012
    uncertain = [selector.consider(result(f"u-{n}", ("person", 0.4)), T0) for n in range(20_000)]
    assert {s.rule for s in uncertain} == {"uncertain"}
    assert 0.008 < sum(s.audit for s in uncertain) / 20_000 < 0.012
    assert all(s.detail.endswith("; also in the audit sample") == s.audit for s in uncertain)


# --- priority order -----------------------------------------------------------------------------------------------

def test_when_several_rules_apply_the_highest_in_the_order_is_recorded_and_ranks_above_the_rest():
    selector = Selector(dataclasses.replace(POLICY, drift_sample_rate=1.0, audit_share=1.0))
    for n in range(60):
        selector.consider(result(f"warm-{n}", ("person", 0.9)), T0)
    selector.note_drift("cam-1", True, T0)
    # dog: rare (and under drift, and audited) and 0.4: uncertain; the shadow sees no dog: a disagreement.
    everything = result("all", ("person", 0.9), ("dog", 0.4), ("dog", 0.95))
    selector.offer_shadow(result("all", ("person", 0.9), model="shadow"), T0)
    found = {"shadow_disagreement": selector.consider(everything, T0)}
    found["uncertain"] = selector.consider(dataclasses.replace(everything, frame_event_id="b"), T0)
    found["rare_class"] = selector.consider(result("c", ("person", 0.9), ("cat", 0.95)), T0)
    found["drift"] = selector.consider(result("d", ("person", 0.9)), T0)
    assert {rule: s.rule for rule, s in found.items()} == {rule: rule for rule in found}
    assert all(s.audit for s in found.values())
    selector.note_drift("cam-1", False, T0)
    found["audit"] = selector.consider(result("e", ("person", 0.9)), T0)
    assert found["audit"].rule == "audit"
    priorities = [found[rule].priority for rule in RULES]
    assert priorities == sorted(priorities, reverse=True) and len(set(priorities)) == len(RULES)


# --- determinism --------------------------------------------------------------------------------------------------

def test_a_replayed_stream_decides_the_same_way():
    def run() -> list:
        selector = Selector(dataclasses.replace(POLICY, camera_budget_per_hour=100_000,
                                                total_budget_per_hour=100_000, budget_burst_share=1.0))
        selector.note_drift("cam-2", True, T0)
        rng = np.random.default_rng(3)
        out = []
        for n in range(3000):
            labels = ("person", "car", "dog")[n % 3]
            candidate = result(f"r-{n}", (labels, float(rng.uniform(0.25, 1.0))), camera=f"cam-{n % 3}",
                               t=T0 + n / 5)
            s = selector.consider(candidate, candidate.event_time)
            out.append(s and (s.rule, s.detail, s.priority, s.audit))
        return out

    first, again = run(), run()
    assert first == again
    assert {s[0] for s in first if s} >= {"uncertain", "drift", "audit"}


def test_draws_are_a_pure_function_of_the_frame_id_in_every_process():
    # Not Python's hash() (salted per process): a restarted service must draw the same for a replayed result.
    assert draw("frame-1", "audit") == pytest.approx(0.37999741901109135)
    assert draw("frame-1", "drift") == pytest.approx(0.29061227390365735)


def test_a_candidate_is_made_from_an_inference_result():
    from protos import events_pb2

    message = events_pb2.InferenceResult(camera_id="cam-9", frame_event_id="f-9", width=640, height=480,
                                         model=events_pb2.ModelRef(name="yolov3-tiny", version="3"))
    message.envelope.event_time.FromNanoseconds(1_800_000_000_250_000_000)
    message.detections.add(label="person", score=0.5, box=events_pb2.Box(x1=1, y1=2, x2=30, y2=40))
    candidate = Candidate.from_result(events_pb2.InferenceResult.FromString(message.SerializeToString()))
    assert candidate == Candidate("cam-9", "f-9", 1_800_000_000.25, "yolov3-tiny", "3", 640, 480,
                                  (Proposal("person", 0.5, (1.0, 2.0, 30.0, 40.0)),))


# --- budgets ------------------------------------------------------------------------------------------------------

def offer(selector: Selector, candidate: Candidate, image: int | bytes, now: float) -> bool:
    """What the intake does: consider; when chosen, hash the frame (a JPEG, or scene(seed)) and admit it."""
    selection = selector.consider(candidate, now)
    if selection is None:
        return False
    return selector.admit(candidate, selection, perceptual_hash(scene(image) if isinstance(image, int) else image),
                          now)


def most_in_any(times: list[float], seconds: float) -> int:
    ordered = np.sort(np.array(times))
    return int(max(np.searchsorted(ordered, t + seconds) - i for i, t in enumerate(ordered)))


def test_consider_charges_nothing_and_admit_charges_the_camera_and_the_total():
    selector = Selector(POLICY)
    candidate = result("x", ("person", 0.4))
    for _ in range(100):
        assert selector.consider(candidate, T0) is not None
    assert selector.budget_used("cam-1", T0) == 0
    assert selector.admit(candidate, selector.consider(candidate, T0), perceptual_hash(scene(1)), T0)
    assert selector.budget_used("cam-1", T0) == 1 and selector.budget_used(None, T0) == 1


def test_a_camera_gets_at_most_its_budget_in_any_hour_paced_over_the_hour():
    selector = Selector(POLICY)
    admitted = [t for n, t in enumerate(T0 + np.arange(0, 3 * HOUR_S, 2.0))
                if offer(selector, result(f"b-{n}", ("person", 0.4), t=t), n, t)]
    assert most_in_any(admitted, HOUR_S) == 60 and most_in_any(admitted, HOUR_S / 4) == 15
    assert len(admitted) >= 150  # the budget comes back as the hour slides


def test_the_overall_budget_holds_across_cameras_and_rules_take_only_their_share():
    selector = Selector(POLICY)
    admitted = []
    for n in range(30_000):  # 40 cameras for 50 minutes, 2,400 within their own budgets; 600 overall
        t = T0 + n * 0.1
        if offer(selector, result(f"o-{n}", ("person", 0.4), camera=f"cam-{n % 40}"), n, t):
            admitted.append(t)
    assert len(admitted) == POLICY.total_budget_per_hour == selector.budget_used(None, T0 + 3000)
    assert most_in_any(admitted, HOUR_S / 4) == 150  # paced

    audits = Selector(dataclasses.replace(POLICY, audit_share=1.0))
    taken = sum(offer(audits, result(f"a-{n}", ("person", 0.9)), n, T0 + n * 10.0) for n in range(360))
    assert taken == POLICY.camera_budget_per_hour * POLICY.audit_budget_share  # 15 of the camera's 60


def test_a_flood_of_10000_low_confidence_results_from_one_camera_yields_at_most_its_budget():
    selector = Selector(POLICY)
    rng = np.random.default_rng(11)
    admitted = 0
    for n in range(10_000):  # 5 results a second for 2,000 s, each frame a different scene
        t = T0 + n / 5
        candidate = result(f"flood-{n}", ("person", float(rng.uniform(0.25, 0.6))), t=t)
        selection = selector.consider(candidate, t)
        if selection is not None:
            admitted += selector.admit(candidate, selection, perceptual_hash(scene(n, quality=70)), t)
    assert 0 < admitted <= POLICY.camera_budget_per_hour
    assert selector.budget_used("cam-1", T0 + 2000) == admitted


def test_restore_after_a_restart_spends_the_budget_again_and_remembers_the_hashes():
    selector = Selector(POLICY)
    for n in range(15):
        selector.restore("cam-1", T0 - 60 + n, perceptual_hash(scene(n)), rule="uncertain")
    assert selector.consider(result("after", ("person", 0.4)), T0) is None  # the quarter hour's 15 are spent
    later = T0 + HOUR_S / 4
    again = result("again", ("person", 0.4), t=later)
    assert not selector.admit(again, selector.consider(again, later), perceptual_hash(scene(3, quality=60)), later)
    assert selector.admit(again, selector.consider(again, later + 10), perceptual_hash(scene(99)), later + 10)
    assert selector.budget_used("cam-1", later + 10) == 16


# --- near-duplicates ----------------------------------------------------------------------------------------------

def test_the_same_scene_reencoded_is_a_near_duplicate_and_a_different_scene_is_not():
    assert perceptual_hash(scene(1, quality=95)) - perceptual_hash(scene(1, quality=40)) <= 2
    assert perceptual_hash(scene(1)) - perceptual_hash(scene(2)) > 16
    with pytest.raises(ValueError):
        perceptual_hash(b"not a jpeg")


def test_small_frames_reencoded_match_and_different_small_frames_do_not():
    rng = np.random.default_rng(5)
    small = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    assert perceptual_hash(jpeg(small[0], 95)) - perceptual_hash(jpeg(small[0], 60)) <= 4
    assert perceptual_hash(jpeg(small[0])) - perceptual_hash(jpeg(small[1])) > 16


def test_a_near_duplicate_of_a_selected_frame_is_refused_and_quiets_the_camera_for_a_while():
    selector = Selector(POLICY)
    assert offer(selector, result("n-1", ("person", 0.4)), scene(5, quality=90), T0)
    assert not offer(selector, result("n-2", ("person", 0.4)), scene(5, quality=50), T0 + 1)
    assert selector.consider(result("n-3", ("person", 0.4)), T0 + 2) is None  # cooling down
    assert offer(selector, result("n-4", ("person", 0.4)), scene(6), T0 + 1 + POLICY.near_duplicate_cooldown_s)
    assert selector.budget_used("cam-1", T0 + 10) == 2
    # Another camera's frames are its own; an hour later the scene may be chosen again.
    assert offer(selector, result("n-5", ("person", 0.4), camera="cam-2"), scene(5), T0 + 10)
    assert offer(selector, result("n-6", ("person", 0.4)), scene(5), T0 + HOUR_S + 10)


def test_a_frame_chosen_twice_for_one_result_is_admitted_once():
    selector = Selector(POLICY)
    primary = result("twice", ("person", 0.4), ("car", 0.9))
    first = selector.consider(primary, T0)
    second = selector.offer_shadow(result("twice", ("person", 0.4), model="shadow"), T0)
    assert first.rule == "uncertain" and second.rule == "shadow_disagreement"
    assert selector.admit(primary, first, perceptual_hash(scene(7)), T0)
    assert not selector.admit(second.candidate, second, perceptual_hash(scene(7)), T0)
    assert selector.offer_shadow(result("twice", ("person", 0.4), model="shadow-2"), T0) is None


def test_consecutive_frames_of_the_static_demo_camera_are_near_duplicates_and_distant_ones_may_not_be(demo_frames):
    selector = Selector(POLICY)
    first = result("d-0", ("person", 0.4))
    assert selector.admit(first, selector.consider(first, T0), perceptual_hash(jpeg(demo_frames[0])), T0)
    assert not offer(selector, result("d-1", ("person", 0.4)), jpeg(demo_frames[1], quality=60), T0 + 0.2)
    distances = [perceptual_hash(jpeg(demo_frames[0])) - perceptual_hash(jpeg(f)) for f in demo_frames[::25]]
    assert max(distances) > POLICY.near_duplicate_distance  # people walk: the scene changes over the clip


# --- memory bounds ------------------------------------------------------------------------------------------------

def test_memory_stays_bounded_whatever_the_stream():
    policy = dataclasses.replace(POLICY, shadow_pairing_max=500, max_cameras=50, rare_class_window=300,
                                 recent_hashes_per_camera=8)
    selector = Selector(policy)
    for n in range(20_000):
        selector.consider(result(f"m-{n}", ("person", 0.9), ("car", 0.9), camera=f"cam-{n % 80}"), T0 + n * 0.001)
        selector.offer_shadow(result(f"s-{n}", ("person", 0.9), model="shadow"), T0 + n * 0.001)
    assert selector.cameras == 50 and selector.pending_pairs == 1000
    assert max(len(c.labels) for c in selector._cameras.values()) <= 300
    # Waiting results older than the pairing age are dropped as time moves on.
    selector.consider(result("late", ("person", 0.9)), T0 + 1000)
    assert selector.pending_pairs == 1
    hashes = RecentHashes(capacity=8)
    for n in range(100):
        hashes.add(n, T0)
    assert len(hashes) == 8 and hashes.nearest(hash_bits(perceptual_hash(scene(1))), T0 + HOUR_S + 1) is None
