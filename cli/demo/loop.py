"""`vigil demo loop` (`make demo-loop`): the feedback loop on the running local stack, with no step by hand but the
labelling, which a scripted annotator does through the annotation service's own HTTP API.

  1. pace: drift, annotation, datasets and training are restarted with a demo site's pace (15 s drift windows, a
     larger annotation budget, a version every N labels, split groups of 20 s, short rollout stages); the
     production defaults come back at the end unless --keep-pace;
  2. a camera (`loop-cam`) watches the demo footage until the drift service has learnt its reference;
  3. the camera's picture darkens (its stream moves to the stack's /dusk mount: the same footage at 0.12 gain)
     and the time is noted: everything after is measured from it;
  4. drift raises an alert for the camera; annotation samples the camera at its drift rate; the scripted
     annotator labels what is queued; datasets commits a version; training trains a candidate and gates it; the
     rollout runs it in shadow, then as a canary, then promotes it; drift re-learns the camera's reference and the
     alert clears;
  5. unless --skip-bad-runs: a candidate trained on the same version with its labels shuffled is stopped at the
     gate, and the same candidate forced into shadow (`vigil models rollout`) is rolled back by the live checks.

Every step is printed as it happens with its delay; the summary (stage durations, both models' test metrics) is
printed as JSON at the end (`--json FILE` writes it too). Exit 0 when the loop closed, 1 when a step did not come."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from cli.demo.events import EventLog
from libs.common.topics import DATASETS, DRIFT_REFERENCES, MONITORING, ROLLOUTS, TRAINING
from services.datasets.settings import DatasetsSettings

DATASETS_BUCKET = DatasetsSettings.model_fields["bucket"].default

CAMERA = "loop-cam"
DATASET = "site"
PACED = ("drift", "annotation", "datasets", "training")
# A demo site's pace: what a site would run over hours, in minutes.
PACE = {
    "drift": {"VIGIL_DRIFT_WINDOW_S": "15", "VIGIL_DRIFT_REFERENCE_WINDOWS": "3", "VIGIL_DRIFT_MIN_FRAMES": "20",
              "VIGIL_DRIFT_RAISE_AFTER": "2", "VIGIL_DRIFT_CLEAR_AFTER": "2"},
    "annotation": {"VIGIL_ANNOTATION_CAMERA_BUDGET_PER_HOUR": "3600", "VIGIL_ANNOTATION_TOTAL_BUDGET_PER_HOUR": "7200",
                   "VIGIL_ANNOTATION_DRIFT_SAMPLE_RATE": "0.5", "VIGIL_ANNOTATION_DOUBLE_LABEL_SHARE": "0",
                   # One street, filmed from one place: frames a few pedestrians apart are worth a look each.
                   "VIGIL_ANNOTATION_DUPLICATE_DISTANCE": "2", "VIGIL_ANNOTATION_DUPLICATE_COOLDOWN_S": "0.5"},
    "datasets": {"VIGIL_DATASETS_COMMIT_EVERY_LABELS": "60", "VIGIL_DATASETS_COMMIT_EVERY_MIN": "1.5",
                 "VIGIL_DATASETS_SPLIT_GROUP_S": "10"},
    "training": {"VIGIL_TRAINING_MIN_ITEMS": "180", "VIGIL_TRAINING_ROLLOUT_SHADOW_MIN_FRAMES": "100",
                 "VIGIL_TRAINING_ROLLOUT_SHADOW_MIN_S": "30", "VIGIL_TRAINING_ROLLOUT_CANARY_MIN_FRAMES": "60",
                 "VIGIL_TRAINING_ROLLOUT_CANARY_MIN_S": "30"},
}


def say(message: str) -> None:
    print(f"[loop] {message}", file=sys.stderr, flush=True)


@dataclass
class Timeline:
    """When each step happened, in seconds after the drift began."""
    drift_at: float = 0.0
    marks: dict[str, float] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)

    def mark(self, step: str, at: float, **facts) -> None:
        self.marks[step] = round(at - self.drift_at, 1)
        self.facts.update(facts)
        detail = ", ".join(f"{k}={v}" for k, v in facts.items())
        say(f"{step} at +{self.marks[step]:.1f} s" + (f" ({detail})" if detail else ""))

    def stages(self) -> dict[str, float]:
        """Each stage's own duration: from the step before it to it."""
        order = ["drift_detected", "first_label", "labelled_and_committed", "trained", "shadow", "canary",
                 "promoted"]
        durations, previous = {}, 0.0
        for step in sorted((step for step in order if self.marks.get(step, -1.0) >= 0), key=self.marks.get):
            durations[step] = round(self.marks[step] - previous, 1)
            previous = self.marks[step]
        return durations


def pace_services(stack_factory, paced: bool, progress=say) -> None:
    """Restarts the loop's services with the demo pace (or, `paced` False, with the stack's own settings)."""
    stack = stack_factory(PACE if paced else {})
    for name in PACED:
        stack.supervisor.stop(name, progress=progress)
    stack.supervisor.up(progress=progress)


def run_loop(stack, args: argparse.Namespace) -> dict:
    from cli.annotations import BUCKET as ANNOTATION_BUCKET, stack_s3_client
    from cli.demo.annotator import run_annotator, scripted_users
    from cli.demo.reference import Reference
    from services.annotation.web.users import UserStore

    config = stack.config
    events = EventLog(config.kafka_bootstrap, [MONITORING, DATASETS, TRAINING, ROLLOUTS, DRIFT_REFERENCES])
    timeline = Timeline()
    stop_annotating = threading.Event()
    annotator = None
    try:
        started = time.time()
        say(f"{args.camera} watches the demo footage until drift has learnt its reference")
        bright, dark = (f"rtsp://127.0.0.1:{config.ports.rtsp}/{path}" for path in (config.camera_id, "dusk"))
        stack.register_camera(args.camera, bright, config.sample_fps)
        events.wait_for(DRIFT_REFERENCES, lambda e: e.camera_id == args.camera and not e.model.name,
                        args.step_timeout, f"drift reference for {args.camera}", since=started)

        # The scripted annotator signs in as two people (an annotator, and a reviewer who also labels) and labels
        # whatever is queued, from here to the promotion.
        credentials = scripted_users(UserStore(stack_s3_client(stack), ANNOTATION_BUCKET))
        labelled: dict = {}

        def on_label(task: dict, _label: dict) -> None:
            if task.get("camera_id") == args.camera and timeline.drift_at and "first_label" not in timeline.marks:
                timeline.mark("first_label", time.time(), rule=task.get("selection", {}).get("rule"))

        annotator = threading.Thread(target=lambda: labelled.update(stats=run_annotator(
            f"http://127.0.0.1:{config.ports.annotation_ui}", credentials, stop_annotating, Reference.load(),
            on_label=on_label)), name="annotator", daemon=True)
        annotator.start()

        timeline.drift_at = time.time()
        stack.register_camera(args.camera, dark, config.sample_fps)
        say(f"{args.camera} darkens (its stream moves to /dusk): the drift begins")

        alert = events.wait_for(MONITORING, lambda e: e.WhichOneof("detail") == "drift_alert"
                                and e.drift_alert.camera_id == args.camera and e.drift_alert.state == "raised",
                                args.step_timeout, f"drift alert for {args.camera}", since=timeline.drift_at)
        timeline.mark("drift_detected", alert.at, feature=alert.event.drift_alert.feature)

        # Versions are committed every few dozen labels; each with enough items is trained on, until one passes the
        # gate (a version whose test split is still too small to show the gain is refused, and labelling goes on).
        told: set[str] = set()

        def say_refused(event) -> bool:
            if event.state in ("refused", "failed") and event.dataset == DATASET and event.run_id not in told:
                told.add(event.run_id)
                say(f"{event.dataset}@{event.dataset_version[:12]}: candidate {event.state} "
                    f"({'; '.join(event.reasons)[:300]}); labelling goes on")
            return event.state == "eligible" and event.dataset == DATASET

        outcome = events.wait_for(TRAINING, say_refused, args.step_timeout, "an eligible candidate",
                                  since=timeline.drift_at)
        run = outcome.event
        version = events.wait_for(DATASETS, lambda e: e.action == "commit" and e.version == run.dataset_version,
                                  10, "the trained version's commit", since=timeline.drift_at)
        timeline.mark("labelled_and_committed", version.at, version=version.event.version[:12],
                      items=version.event.item_count,
                      items_of_camera=version.event.statistics.get(f"camera.{args.camera}", 0))
        timeline.mark("trained", outcome.at, state=run.state, candidate=f"{run.candidate.name}:{run.candidate.version}",
                      candidate_map50=round(run.candidate_map50, 3), champion_map50=round(run.champion_map50, 3),
                      refused_before=sum(1 for seen in events.seen if seen.topic == TRAINING
                                         and seen.at >= timeline.drift_at and seen.event.state == "refused"))

        def step(stage: str):
            # The training run names the candidate by its registry version, as does each rollout step.
            return events.wait_for(ROLLOUTS, lambda e: str(e.registry_version) == run.candidate.version
                                   and e.stage in (stage, "rolled_back"), args.step_timeout,
                                   f"rollout step {stage}", since=timeline.drift_at)

        for stage in ("shadow", "canary", "promoted"):
            seen = step(stage)
            if seen.event.stage == "rolled_back":
                raise RuntimeError(f"the candidate was rolled back: {seen.event.reason}")
            timeline.mark(stage, seen.at, reason=seen.event.reason)
        timeline.facts.pop("reason", None)
        stop_annotating.set()

        cleared = events.wait_for(MONITORING, lambda e: e.WhichOneof("detail") == "drift_alert"
                                  and e.drift_alert.camera_id == args.camera and e.drift_alert.state == "cleared",
                                  args.step_timeout, f"the drift alert of {args.camera} cleared",
                                  since=timeline.drift_at)
        timeline.mark("alert_cleared", cleared.at)
        annotator.join(60)
        summary = {"stages_s": timeline.stages(), "marks_s": timeline.marks, **timeline.facts,
                   "drift_to_promoted_s": timeline.marks.get("promoted"),
                   "annotator": labelled["stats"].as_dict() if "stats" in labelled else None}
        if not args.skip_bad_runs:
            summary["worse_candidates"] = bad_runs(stack, events, version.event.version, args)
        return summary
    finally:
        stop_annotating.set()
        if annotator is not None:
            annotator.join(30)
        events.close()
        if not args.keep_camera:
            stack.unregister_camera(args.camera)


def vigil(stack, *argv: str) -> "subprocess.CompletedProcess[str]":
    return subprocess.run([sys.executable, "-m", "cli", "--state-dir", str(stack.paths.state), *argv],
                          capture_output=True, text=True, timeout=1800)


def bad_runs(stack, events: EventLog, version: str, args: argparse.Namespace) -> dict:
    """A candidate trained on the version's labels shuffled is refused by the gate (`vigil train`, exit 3); forced
    into shadow (`vigil models rollout`), it is rolled back by the live checks."""
    from cli.annotations import stack_s3_client
    from cli.demo.worse import commit_shuffled_labels
    from services.datasets.store import DatasetStore

    since = time.time()
    shuffled = commit_shuffled_labels(DatasetStore(stack_s3_client(stack), DATASETS_BUCKET), DATASET, version)
    say(f"{DATASET}@{shuffled[:12]}: the same frames, train and val labels shuffled; training on it by hand")
    trained = vigil(stack, "train", f"{DATASET}@{shuffled}", "--json")
    if trained.returncode not in (0, 3):
        raise RuntimeError(f"vigil train failed ({trained.returncode}): {trained.stderr[-2000:]}")
    job = json.loads(trained.stdout)
    say(f"shuffled labels: candidate {job['model']}:{job['version']} "
        f"{'eligible' if job['eligible'] else 'refused'} (mAP@0.5 {job['candidate_map50']:.3f} vs champion "
        f"{job['champion_map50']:.3f}): {'; '.join(job['reasons'])}")
    forced = vigil(stack, "models", "rollout", job["model"], str(job["version"]), "--stage", "shadow",
                   "--reason", "demo: forced past the gate")
    if forced.returncode != 0:
        raise RuntimeError(f"vigil models rollout failed: {forced.stderr[-2000:]}")
    rolled = events.wait_for(ROLLOUTS, lambda e: e.registry_version == job["version"]
                             and e.stage in ("rolled_back", "promoted"), args.step_timeout,
                             "the forced candidate's rollback", since=since)
    say(f"forced candidate {rolled.event.stage}: {rolled.event.reason}")
    return {"refused_by_gate": not job["eligible"], "gate_reasons": job["reasons"],
            "shuffled_map50": round(job["candidate_map50"], 3), "forced_outcome": rolled.event.stage,
            "forced_reason": rolled.event.reason, "forced_checks": dict(rolled.event.checks)}


def register(subparsers: argparse._SubParsersAction) -> dict:
    demo = subparsers.add_parser("demo", help="demonstrations on the running stack",
                                 description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    demos = demo.add_subparsers(dest="demo", required=True)
    loop = demos.add_parser("loop", help="the feedback loop: drift → labels → dataset → candidate → rollout")
    loop.add_argument("--camera", help=f"the camera that drifts (default {CAMERA}-HHMMSS: a new camera each run, "
                      "so its reference is learnt afresh)")
    loop.add_argument("--step-timeout", type=float, default=600.0, help="longest wait for any one step (s)")
    loop.add_argument("--skip-bad-runs", action="store_true", help="stop once the good candidate is promoted")
    loop.add_argument("--keep-pace", action="store_true", help="leave the services at the demo's pace")
    loop.add_argument("--keep-camera", action="store_true", help="leave the loop's camera in the registry")
    loop.add_argument("--json", type=Path, help="also write the summary to this file")
    return {"demo": cmd_demo}


def cmd_demo(stack, args: argparse.Namespace) -> int:
    from cli.stack.local import LocalStack

    def paced(extra_env: dict) -> LocalStack:
        return LocalStack(state=stack.paths.state, extra_env=extra_env)

    args.camera = args.camera or f"{CAMERA}-{time.strftime('%H%M%S')}"
    say("pacing drift, annotation, datasets and training for the demo")
    pace_services(paced, paced=True)
    try:
        summary = run_loop(stack, args)
    except (TimeoutError, RuntimeError) as exc:
        say(f"the loop did not close: {exc}")
        return 1
    finally:
        if not args.keep_pace:
            say("the services' own pace back")
            pace_services(paced, paced=False)
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0
