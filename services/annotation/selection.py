"""Which inference results become annotation tasks (active learning), decided live and without I/O.

Rules, in priority order (the first that applies is recorded on the task):
  shadow_disagreement  the primary and shadow models' boxes for one frame, IoU-matched (>= 0.5, greedy by IoU),
                       disagree: a confident box (score >= shadow_min_score) on either side without a match among
                       the other side's boxes (score >= the band's low), or a matched pair of different classes.
  uncertain            a score inside the uncertainty band [low, high].
  rare_class           a detected class (score >= rare_class_min_score) makes up less than rare_class_share of the
                       camera's last rare_class_window detections (counted once rare_class_min_seen are seen).
  drift                the camera is under a raised DriftAlert: results sampled at drift_sample_rate.
  audit                a random audit_share of all results, whatever they hold (an unbiased sample for estimating
                       precision). Drawn for every result: a result drawn that a higher rule selects carries
                       `audit=True` and says "also in the audit sample" in its detail, so the sample stays whole
                       (and `draw(frame_event_id, "audit") < audit_share` recomputes it).
Random draws are a hash of the frame_event_id (one salt per rule), so a replayed result decides the same way.

Priority (for the queue): 5 for shadow_disagreement down to 1 for audit, plus a fraction in [0, 1) within the
rule: the share of boxes disagreeing; nearness to the band's middle; rarity; 0.5 for drift and audit.

Budgets, sliding (at most N in any 3600 s, not per clock hour, so no burst at the top of each hour):
  per camera   camera_budget_per_hour; of it, drift and audit may take at most drift_budget_share and
               audit_budget_share (a 1% audit of a 5 fps camera is 180 frames an hour and would take it all);
  overall      total_budget_per_hour;
  pacing       both are also held to their budget_burst_share in any budget_burst_share of an hour (by default
               15 a camera in any 15 minutes), so a flood cannot spend an hour's budget in its first seconds and
               leave nothing for what the next 59 minutes bring.
`consider` checks the budgets and charges nothing; `admit` (after the frame is fetched and hashed) checks again,
refuses a near-duplicate (pHash Hamming distance <= near_duplicate_distance to one of the camera's selected
frames of the last hour, at most recent_hashes_per_camera of them), then charges and remembers the hash. A
near-duplicate refusal quiets the camera for near_duplicate_cooldown_s, so a static scene does not have every
frame fetched and hashed only to be refused. `restore` rebuilds budgets and hashes from existing tasks after a
restart.

Memory is bounded: at most max_cameras cameras (the least recently seen forgotten first), each with bounded
logs; the shadow pairing buffers hold at most shadow_pairing_max results a side, none older than
shadow_pairing_max_age_s."""
from __future__ import annotations

import hashlib
from bisect import bisect_left, insort
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field

from prometheus_client import Counter as MetricCounter

from services.annotation.near_duplicates import RecentHashes

RULES = ("shadow_disagreement", "uncertain", "rare_class", "drift", "audit")  # priority order, highest first
HOUR_S = 3600.0

CONSIDERED = MetricCounter("vigil_annotation_considered_total", "Inference results considered for annotation",
                           ["kind"])
SELECTED = MetricCounter("vigil_annotation_selected_total", "Frames admitted as annotation tasks, by rule", ["rule"])
SUPPRESSED = MetricCounter("vigil_annotation_suppressed_total",
                           "Results a rule chose but a budget, a cooldown or a near-duplicate refused",
                           ["rule", "reason"])


@dataclass(frozen=True)
class SelectionPolicy:
    """The thresholds of selection (services/annotation/settings.py builds it from the environment)."""

    uncertain_low: float = 0.25
    uncertain_high: float = 0.6
    rare_class_share: float = 0.05
    rare_class_window: int = 2000          # the camera's last N detections the share is taken over
    rare_class_min_seen: int = 50          # detections seen before any class can be rare
    rare_class_min_score: float = 0.25     # detections counted (and that can be rare)
    drift_sample_rate: float = 0.2
    drift_alert_max_s: float | None = None  # if set, a raised alert whose "cleared" never came ends then
    audit_share: float = 0.01
    camera_budget_per_hour: int = 60
    total_budget_per_hour: int = 600
    drift_budget_share: float = 0.5        # of the camera's budget
    audit_budget_share: float = 0.25       # of the camera's budget
    budget_burst_share: float = 0.25       # pacing: this share of a budget in any this share of an hour
    near_duplicate_distance: int = 6       # Hamming distance on the 64-bit pHash
    recent_hashes_per_camera: int = 256
    recent_hashes_max_age_s: float = HOUR_S
    near_duplicate_cooldown_s: float = 5.0
    shadow_iou: float = 0.5
    shadow_min_score: float = 0.5
    shadow_pairing_max: int = 10_000       # results waiting for their other half, per side
    shadow_pairing_max_age_s: float = 60.0
    max_cameras: int = 10_000

    def __post_init__(self) -> None:
        if not 0.0 <= self.uncertain_low < self.uncertain_high <= 1.0:
            raise ValueError(f"uncertainty band [{self.uncertain_low}, {self.uncertain_high}] is not inside [0, 1]")
        for name in ("rare_class_share", "drift_sample_rate", "audit_share", "drift_budget_share",
                     "audit_budget_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], not {getattr(self, name)}")
        if not 0.0 < self.budget_burst_share <= 1.0:
            raise ValueError(f"budget_burst_share must be in (0, 1], not {self.budget_burst_share}")
        if self.camera_budget_per_hour < 0 or self.total_budget_per_hour < 0:
            raise ValueError("budgets cannot be negative")


@dataclass(frozen=True)
class Proposal:
    label: str
    score: float
    box: tuple[float, float, float, float]  # pixels x1, y1, x2, y2


@dataclass(frozen=True)
class Candidate:
    camera_id: str
    frame_event_id: str
    event_time: float  # seconds since epoch
    model_name: str
    model_version: str
    width: int
    height: int
    proposals: tuple[Proposal, ...]

    @classmethod
    def from_result(cls, result) -> "Candidate":
        """From an InferenceResult (protos/events.proto)."""
        return cls(result.camera_id, result.frame_event_id,
                   result.envelope.event_time.seconds + result.envelope.event_time.nanos * 1e-9,
                   result.model.name, result.model.version, result.width, result.height,
                   tuple(Proposal(d.label, d.score, (d.box.x1, d.box.y1, d.box.x2, d.box.y2))
                         for d in result.detections))


@dataclass(frozen=True)
class Selection:
    rule: str      # one of RULES
    detail: str    # for people: why this frame, e.g. "person score 0.41 in the band [0.25, 0.60]"
    priority: float
    audit: bool = False  # in the audit draw too (whatever rule chose it): part of the unbiased sample
    candidate: Candidate | None = field(default=None, compare=False)  # the primary result the selection is for


def draw(frame_event_id: str, salt: str) -> float:
    """A uniform number in [0, 1) that is a pure function of the frame's id (and the rule's salt)."""
    digest = hashlib.blake2b(frame_event_id.encode(), digest_size=8, person=salt.encode()[:16]).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def chosen(rule: str, detail: str, fraction: float, audit: bool, candidate: Candidate) -> Selection:
    """A selection by `rule`, ranked len(RULES) - its place plus `fraction` (in [0, 1)) within the rule. A result
    in the audit draw says so in its detail too (the task keeps the detail; the draw can also be recomputed)."""
    if audit and rule != "audit":
        detail += "; also in the audit sample"
    priority = float(len(RULES) - RULES.index(rule)) + min(max(fraction, 0.0), 0.999)
    return Selection(rule, detail, priority, audit, candidate)


def iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def box_disagreements(primary: tuple[Proposal, ...], shadow: tuple[Proposal, ...], policy: SelectionPolicy
                      ) -> tuple[list[str], int]:
    """What two models' boxes for one frame disagree on (human-readable), and how many boxes were compared.
    Boxes are matched greedily by IoU (>= shadow_iou, whatever the class); a confident box unmatched, or a match
    of two classes, is a disagreement. Boxes below the band's low score are only there to be matched."""
    a = [p for p in primary if p.score >= policy.uncertain_low]
    b = [p for p in shadow if p.score >= policy.uncertain_low]
    pairs = sorted(((iou(p.box, s.box), i, j) for i, p in enumerate(a) for j, s in enumerate(b)), reverse=True)
    matched_a: dict[int, int] = {}
    matched_b: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < policy.shadow_iou:
            break
        if i not in matched_a and j not in matched_b:
            matched_a[i] = j
            matched_b.add(j)
    found = []
    for i, j in matched_a.items():
        if a[i].label != b[j].label:
            found.append(f"primary {a[i].label} vs shadow {b[j].label}")
    found += [f"{p.label} {p.score:.2f} only in primary" for i, p in enumerate(a)
              if i not in matched_a and p.score >= policy.shadow_min_score]
    found += [f"{s.label} {s.score:.2f} only in shadow" for j, s in enumerate(b)
              if j not in matched_b and s.score >= policy.shadow_min_score]
    compared = sum(1 for p in a if p.score >= policy.shadow_min_score) + \
        sum(1 for s in b if s.score >= policy.shadow_min_score)
    return found, max(compared, len(matched_a))


class SlidingBudget:
    """At most `limit` charges in any hour, and at most limit * burst_share in any burst_share of an hour.
    Keeps the times of the last `limit` charges (sorted: a restore may come in any order)."""

    __slots__ = ("limit", "burst_limit", "burst_s", "_times")

    def __init__(self, limit: int, burst_share: float):
        self.limit = limit
        self.burst_limit = max(1, round(limit * burst_share)) if limit else 0
        self.burst_s = HOUR_S * burst_share
        self._times: list[float] = []

    def available(self, now: float) -> bool:
        self._expire(now)
        if len(self._times) >= self.limit:
            return False
        recent = len(self._times) - bisect_left(self._times, now - self.burst_s)
        return recent < self.burst_limit

    def charge(self, at: float) -> None:
        insort(self._times, at)
        if len(self._times) > self.limit:  # only restored history can overfill it: the oldest matter least
            del self._times[: len(self._times) - self.limit]

    def used(self, now: float) -> int:
        self._expire(now)
        return len(self._times)

    def _expire(self, now: float) -> None:
        cut = bisect_left(self._times, now - HOUR_S)
        if cut:
            del self._times[:cut]


class CameraState:
    """What selection remembers of one camera: all bounded."""

    __slots__ = ("budget", "rule_budgets", "labels", "label_counts", "hashes", "quiet_until", "drift")

    def __init__(self, policy: SelectionPolicy):
        self.budget = SlidingBudget(policy.camera_budget_per_hour, policy.budget_burst_share)
        self.rule_budgets = {
            rule: SlidingBudget(int(policy.camera_budget_per_hour * share), policy.budget_burst_share)
            for rule, share in (("drift", policy.drift_budget_share), ("audit", policy.audit_budget_share))
            if share < 1.0}
        self.labels: deque[str] = deque()
        self.label_counts: Counter[str] = Counter()
        self.hashes = RecentHashes(policy.recent_hashes_per_camera, policy.recent_hashes_max_age_s)
        self.quiet_until = float("-inf")
        self.drift: dict[str, float] = {}  # alert key -> raised at


class Selector:
    """Decides, for each inference result, whether people should label its frame, and under which rule."""

    def __init__(self, policy: SelectionPolicy | None = None):
        self.policy = policy or SelectionPolicy()
        self.total_budget = SlidingBudget(self.policy.total_budget_per_hour, self.policy.budget_burst_share)
        self._cameras: OrderedDict[str, CameraState] = OrderedDict()
        # frame_event_id -> (arrived at, candidate, admitted): results waiting for the other model's result
        self._primaries: OrderedDict[str, list] = OrderedDict()
        self._shadows: OrderedDict[str, tuple[float, Candidate]] = OrderedDict()
        self._considered = CONSIDERED.labels("primary")
        self._considered_shadow = CONSIDERED.labels("shadow")

    # --- the rules ----------------------------------------------------------------------------------------------

    def consider(self, candidate: Candidate, now: float) -> Selection | None:
        """The selection a primary result earns (budgets checked, nothing charged), or None."""
        self._considered.inc()
        camera = self._camera(candidate.camera_id)
        self._expire_pairs(now)
        shadow = self._shadows.pop(candidate.frame_event_id, None)
        if shadow is None:
            self._remember(self._primaries, candidate.frame_event_id, [now, candidate, False])
        selection = self._first_rule(candidate, camera, shadow[1] if shadow else None, now)
        self._count_labels(candidate, camera)
        if selection is None:
            return None
        refusal = self._refusal(camera, selection.rule, now)
        if refusal:
            SUPPRESSED.labels(selection.rule, refusal).inc()
            return None
        return selection

    def offer_shadow(self, candidate: Candidate, now: float) -> Selection | None:
        """A shadow model's result: when its primary result for the same frame has been seen (and not admitted
        yet) and they disagree, the selection for that primary result (`selection.candidate`); else None. A
        shadow result that comes first waits (bounded) for its primary."""
        self._considered_shadow.inc()
        self._expire_pairs(now)
        waiting = self._primaries.get(candidate.frame_event_id)
        if waiting is None:
            self._remember(self._shadows, candidate.frame_event_id, (now, candidate))
            return None
        _arrived, primary, admitted = waiting
        if admitted:
            return None
        selection = self._shadow_rule(primary, candidate)
        if selection is None:
            return None
        refusal = self._refusal(self._camera(primary.camera_id), selection.rule, now)
        if refusal:
            SUPPRESSED.labels(selection.rule, refusal).inc()
            return None
        return selection

    def note_drift(self, camera_id: str, raised: bool, now: float, key: str = "") -> None:
        """A DriftAlert for the camera raised or cleared. `key` tells apart the camera's alerts (its input's, and
        each model's outputs'): the camera is under drift while any of them is raised."""
        drift = self._camera(camera_id).drift
        if raised:
            drift[key] = now
        else:
            drift.pop(key, None)

    def under_drift(self, camera_id: str, now: float) -> bool:
        camera = self._cameras.get(camera_id)
        if camera is None or not camera.drift:
            return False
        if self.policy.drift_alert_max_s is None:
            return True
        for key, raised_at in list(camera.drift.items()):
            if now - raised_at > self.policy.drift_alert_max_s:
                del camera.drift[key]
        return bool(camera.drift)

    # --- admission ----------------------------------------------------------------------------------------------

    def admit(self, candidate: Candidate, selection: Selection, image_hash, now: float) -> bool:
        """Charges the budgets and remembers the frame's hash (an imagehash.ImageHash, its 64 bits as an int, or
        None when there is none). False, charging nothing, when a budget is spent meanwhile or the frame is a
        near-duplicate of one the camera had selected in the last hour."""
        camera = self._camera(candidate.camera_id)
        waiting = self._primaries.get(candidate.frame_event_id)
        if waiting is not None and waiting[2]:  # chosen by consider and again by its shadow's disagreement
            SUPPRESSED.labels(selection.rule, "already_admitted").inc()
            return False
        refusal = self._refusal(camera, selection.rule, now)
        if refusal is None and image_hash is not None:
            nearest = camera.hashes.nearest(image_hash, now)
            if nearest is not None and nearest <= self.policy.near_duplicate_distance:
                refusal = "near_duplicate"
                camera.quiet_until = now + self.policy.near_duplicate_cooldown_s
        if refusal:
            SUPPRESSED.labels(selection.rule, refusal).inc()
            return False
        self._charge(camera, selection.rule, now, image_hash)
        if waiting is not None:
            waiting[2] = True
        SELECTED.labels(selection.rule).inc()
        return True

    def restore(self, camera_id: str, created_at: float, image_hash=None, rule: str | None = None) -> None:
        """An existing task (read back after a restart): its budget is spent again and its hash remembered."""
        self._charge(self._camera(camera_id), rule, created_at, image_hash)

    def budget_used(self, camera_id: str | None, now: float) -> int:
        """Tasks charged in the last hour: the camera's, or overall."""
        if camera_id is None:
            return self.total_budget.used(now)
        camera = self._cameras.get(camera_id)
        return camera.budget.used(now) if camera else 0

    @property
    def cameras(self) -> int:
        return len(self._cameras)

    @property
    def pending_pairs(self) -> int:
        return len(self._primaries) + len(self._shadows)

    # --- internals ----------------------------------------------------------------------------------------------

    def _first_rule(self, candidate: Candidate, camera: CameraState, shadow: Candidate | None,
                    now: float) -> Selection | None:
        policy = self.policy
        audit = draw(candidate.frame_event_id, "audit") < policy.audit_share
        if shadow is not None:
            selection = self._shadow_rule(candidate, shadow, audit)
            if selection:
                return selection
        low, high = policy.uncertain_low, policy.uncertain_high
        middle, half = (low + high) / 2, (high - low) / 2
        best = None
        for p in candidate.proposals:
            if low <= p.score <= high and (best is None or abs(p.score - middle) < abs(best.score - middle)):
                best = p
        if best is not None:
            return chosen("uncertain", f"{best.label} score {best.score:.2f} in the band [{low:.2f}, {high:.2f}]",
                          1.0 - abs(best.score - middle) / half, audit, candidate)
        seen = len(camera.labels)
        if seen >= policy.rare_class_min_seen:
            rarest, share = None, 1.0
            for p in candidate.proposals:
                if p.score >= policy.rare_class_min_score:
                    s = camera.label_counts.get(p.label, 0) / seen
                    if s < share:
                        rarest, share = p.label, s
            if rarest is not None and share < policy.rare_class_share:
                return chosen("rare_class", f"{rarest} is {share:.1%} of the camera's last {seen:,} detections "
                              f"(below {policy.rare_class_share:.0%})",
                              1.0 - share / policy.rare_class_share, audit, candidate)
        if camera.drift and self.under_drift(candidate.camera_id, now) \
                and draw(candidate.frame_event_id, "drift") < policy.drift_sample_rate:
            alerts = ", ".join(sorted(key or "input" for key in camera.drift))
            return chosen("drift", f"camera under a drift alert ({alerts}), sampled at {policy.drift_sample_rate:.0%}",
                          0.5, audit, candidate)
        if audit:
            return chosen("audit", f"random audit sample ({policy.audit_share:.1%} of all results)", 0.5, True,
                          candidate)
        return None

    def _shadow_rule(self, primary: Candidate, shadow: Candidate, audit: bool | None = None) -> Selection | None:
        found, compared = box_disagreements(primary.proposals, shadow.proposals, self.policy)
        if not found:
            return None
        if audit is None:
            audit = draw(primary.frame_event_id, "audit") < self.policy.audit_share
        shown = "; ".join(found[:3]) + (f"; and {len(found) - 3} more" if len(found) > 3 else "")
        return chosen("shadow_disagreement",
                      f"{primary.model_name} {primary.model_version} and shadow {shadow.model_name} "
                      f"{shadow.model_version} disagree: {shown}",
                      len(found) / max(compared, 1), audit, primary)

    def _count_labels(self, candidate: Candidate, camera: CameraState) -> None:
        window = self.policy.rare_class_window
        for p in candidate.proposals:
            if p.score >= self.policy.rare_class_min_score:
                camera.labels.append(p.label)
                camera.label_counts[p.label] += 1
                if len(camera.labels) > window:
                    gone = camera.labels.popleft()
                    if camera.label_counts[gone] == 1:
                        del camera.label_counts[gone]
                    else:
                        camera.label_counts[gone] -= 1

    def _refusal(self, camera: CameraState, rule: str, now: float) -> str | None:
        if now < camera.quiet_until:
            return "cooldown"
        rule_budget = camera.rule_budgets.get(rule)
        if rule_budget is not None and not rule_budget.available(now):
            return "rule_budget"
        if not camera.budget.available(now):
            return "camera_budget"
        if not self.total_budget.available(now):
            return "total_budget"
        return None

    def _charge(self, camera: CameraState, rule: str | None, at: float, image_hash) -> None:
        camera.budget.charge(at)
        self.total_budget.charge(at)
        if rule in camera.rule_budgets:
            camera.rule_budgets[rule].charge(at)
        if image_hash is not None:
            camera.hashes.add(image_hash, at)

    def _camera(self, camera_id: str) -> CameraState:
        camera = self._cameras.get(camera_id)
        if camera is None:
            camera = self._cameras[camera_id] = CameraState(self.policy)
            if len(self._cameras) > self.policy.max_cameras:
                self._cameras.popitem(last=False)
        else:
            self._cameras.move_to_end(camera_id)
        return camera

    def _remember(self, buffer: OrderedDict, frame_event_id: str, entry) -> None:
        buffer[frame_event_id] = entry
        buffer.move_to_end(frame_event_id)
        while len(buffer) > self.policy.shadow_pairing_max:
            buffer.popitem(last=False)

    def _expire_pairs(self, now: float) -> None:
        oldest = now - self.policy.shadow_pairing_max_age_s
        for buffer in (self._primaries, self._shadows):
            while buffer:
                entry = next(iter(buffer.values()))
                if entry[0] >= oldest:
                    break
                buffer.popitem(last=False)
