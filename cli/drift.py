"""`vigil drift status | reference set | reference show`: what the drift service sees, and its reference profiles.

  vigil drift status [--json]                       per camera, model version and sensor: the newest window
                                                    (start, end, status, events), its drifting features with score
                                                    and threshold, the alert state (and the open alert's top features)
  vigil drift reference set CAMERA --from T --to T [--model NAME[@VERSION]] [--by WHO]
  vigil drift reference set sensor/ID --from T --to T     (or: --sensor ID)
                                                    a reference set by hand from the windows of a time range
                                                    (times in ISO 8601 with a zone, e.g. 2026-11-28T18:00:00Z)
  vigil drift reference show [SUBJECT] [--json]     the references in force: source, who set them and when, the
                                                    range and windows, the features and learnt thresholds

`reference set` reads the windows the drift service published on vigil.drift.windows (each carries its samples,
kept 30 days), keeps those lying wholly in [from, to) with enough events, builds a profile per subject, stores it
in the object store and announces it on the compacted vigil.drift.references, which the service follows: the
next window is compared with it. Without --model a camera's input and every model version's outputs seen in the
range get a reference; with --model, that model's outputs only (every version seen, or the one given). A subject
with fewer than --min-windows usable windows in the range is left as it was (said on stderr); when none has
enough, nothing is written and the exit code is 2.

A reference's source, as `reference show` gives it: "auto" (the subject's first windows), "manual" (`reference
set`), or "promotion of MODEL version V": the service re-learnt a camera's input reference from its windows since
its drift began when a model trained on the camera's frames was promoted (services/drift/promotion.py)."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone

from libs.common.compacted import TableWriteFailed
from libs.common.logs import configure_logging
from libs.common.objectstore import object_store_client
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import CATALOG, DRIFT_REFERENCES, DRIFT_WINDOWS, MONITORING, ensure_topics
from protos import events_pb2
from services.drift.features import performance_estimate
from services.drift.processor import reference_announcement, subject_of
from services.drift.references import ReferenceStore, references_table
from services.drift.settings import DriftSettings
from services.drift.window_history import (
    MIN_REFERENCE_WINDOWS, RangeSelection, build_references, camera_subject_filter, seconds)
# read_partitions: cli/annotations.py reads it from here.
from services.drift.window_reader import LATE_S, read_partitions, tail_of, windows_in_range  # noqa: F401
from services.drift.windows import MIN_FRAMES, ComparisonPolicy, DriftKey

BUCKET = DriftSettings.model_fields["reference_bucket"].default
# `status` reads each partition's newest messages only: at 60 s windows, 3 partitions and a few dozen subjects,
# 5,000 per partition is hours of windows.
STATUS_TAIL = 5000


class BadInput(ValueError):
    """What the user typed cannot be used (exit code 2)."""


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- parsing -----------------------------------------------------------------------------------------------------
def parse_time(text: str) -> float:
    """ISO 8601 with a zone ("2026-11-28T18:00:00Z", "...+01:00") to seconds since the epoch. A time without a zone
    is refused: read on another machine it would name another instant."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadInput(f"not an ISO 8601 time: {text!r} (e.g. 2026-11-28T18:00:00Z)") from None
    if moment.tzinfo is None:
        raise BadInput(f"{text!r} has no time zone: add Z for UTC (e.g. {text.strip()}Z) or an offset like +01:00")
    return moment.timestamp()


def parse_range(start_text: str, end_text: str) -> tuple[float, float]:
    start, end = parse_time(start_text), parse_time(end_text)
    if end <= start:
        raise BadInput(f"--to ({end_text}) must be after --from ({start_text})")
    return start, end


def parse_model(text: str | None) -> tuple[str | None, str | None]:
    """NAME or NAME@VERSION."""
    if text is None:
        return None, None
    name, _, version = text.partition("@")
    if not name or (_ and not version) or "|" in text:
        raise BadInput(f"--model takes NAME or NAME@VERSION, not {text!r}")
    return name, version or None


def parse_target(target: str | None, sensor: str | None,
                 model: str | None) -> tuple[str, Callable[[DriftKey], bool]]:
    """What `reference set` names: a camera id (or camera/ID), sensor/ID, or --sensor ID; as a description and a
    filter of the window keys to set."""
    if (target is None) == (sensor is None):
        raise BadInput("name a camera (CAMERA or camera/ID) or a sensor (sensor/ID or --sensor ID), one of them")
    if sensor is None and target.startswith("sensor/"):
        sensor = target.removeprefix("sensor/")
    if sensor is not None:
        if model is not None:
            raise BadInput("--model is for cameras: a sensor has no model outputs")
        if not sensor or "/" in sensor or "|" in sensor:
            raise BadInput(f"not a sensor id: {sensor!r}")
        subject = f"sensor/{sensor}"
        return subject, lambda key: key == DriftKey(subject)
    camera = target.removeprefix("camera/")
    if not camera or "/" in camera or "|" in camera:
        raise BadInput(f"not a camera id: {target!r}")
    name, version = parse_model(model)
    described = f"camera/{camera}" + (f" model {name}" + (f"@{version}" if version else "") if name else "")
    return described, camera_subject_filter(camera, name, version)


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


# --- settings --------------------------------------------------------------------------------------------------
def _kafka(stack, args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=args.bootstrap or stack.config.kafka_bootstrap)


def _reference_store(stack, args: argparse.Namespace) -> ReferenceStore:
    settings = ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                   access_key=stack.config.s3_access_key, secret_key=stack.config.s3_secret_key)
    return ReferenceStore(object_store_client(settings), args.bucket)


# --- reference set ---------------------------------------------------------------------------------------------
def cmd_reference_set(stack, args: argparse.Namespace) -> int:
    try:
        start, end = parse_range(args.start, args.end)
        described, wanted = parse_target(args.target, args.sensor, args.model)
        if args.min_windows < 1 or args.min_frames < 1:
            raise BadInput("--min-windows and --min-frames take a positive number")
    except BadInput as exc:
        _progress(f"vigil: {exc}")
        return 2
    kafka = _kafka(stack, args)
    policy = ComparisonPolicy(min_frames=args.min_frames)
    selection = RangeSelection(start, end)
    _progress(f"vigil: reading the windows of {described} from {iso(start)} to {iso(end)} on {DRIFT_WINDOWS}")
    read = windows_in_range(kafka, selection, wanted, args.late_s, _progress)
    if not selection.windows:
        _progress(f"vigil: no window of {described} lies wholly between {iso(start)} and {iso(end)} "
                  f"({read} windows of every subject read); nothing written")
        return 2
    keys, thin = [], []
    for key in sorted(selection.windows):
        usable = selection.usable(key, policy)
        (keys if len(usable) >= args.min_windows else thin).append((key, len(usable), len(selection.windows[key])))
    for key, usable, seen in thin:
        _progress(f"vigil: {subject_of(key)}: {usable} of its {seen} windows in the range have at least "
                  f"{args.min_frames} events, fewer than {args.min_windows}: its reference is left as it was")
    if not keys:
        _progress("vigil: no subject has enough windows in the range (widen it, or lower --min-windows); "
                  "nothing written")
        return 2
    who = args.by or os.environ.get("USER") or getpass.getuser()
    profiles = build_references(selection, [k for k, _, _ in keys], who, time.time(), policy)
    store = _reference_store(stack, args)
    store.ensure_bucket()
    ensure_topics(kafka.client_config(), kafka.replication_factor,
                  tuple(s for s in CATALOG if s.name == DRIFT_REFERENCES))
    table = references_table(kafka.client_config(), "vigil-cli")
    for profile in profiles:
        ref = store.put(profile)
        out = reference_announcement(profile, ref)
        try:
            table.put(out.key.decode(), events_pb2.DriftReference.FromString(out.value))
        except TableWriteFailed as exc:
            _progress(f"vigil: the profile is stored at s3://{ref.bucket}/{ref.key} but not announced: {exc}")
            return 1
        print(f"{subject_of(profile.key)}: reference set from {profile.windows} windows "
              f"({iso(profile.start)} to {iso(profile.end)}, {profile.summary.frames} events, "
              f"{len(profile.thresholds)} learnt thresholds) by {profile.set_by}; s3://{ref.bucket}/{ref.key}")
    if selection.unreadable:
        _progress(f"vigil: {selection.unreadable} windows in the range had no readable samples and were left out")
    return 0


# --- reference show --------------------------------------------------------------------------------------------
def _matches(subject: str, wanted: str | None) -> bool:
    """A subject, or a camera id / camera/ID naming the camera's input and every model's outputs."""
    if wanted is None or subject == wanted:
        return True
    camera = f"camera/{wanted.removeprefix('camera/')}"
    return subject.split("|")[0] == camera


def reference_row(announcement: events_pb2.DriftReference, profile) -> dict:
    row = {"subject": announcement.subject, "source": announcement.source, "set_by": announcement.set_by,
           "set_at": iso(seconds(announcement.set_time)), "range_start": iso(seconds(announcement.range_start)),
           "range_end": iso(seconds(announcement.range_end)), "windows": announcement.windows,
           "object": f"s3://{announcement.profile.bucket}/{announcement.profile.key}"}
    if profile is None:
        return {**row, "events": None, "features": None, "thresholds": None}
    summary = profile.summary
    features = sorted({*summary.numeric, *summary.categorical, *(["embedding"] if summary.embeddings else []),
                       *performance_estimate(summary.totals), *profile.thresholds})
    return {**row, "events": summary.frames, "features": features,
            "thresholds": {name: {"metric": metric, "threshold": threshold}
                           for name, (metric, threshold) in sorted(profile.thresholds.items())}}


def print_references(rows: list[dict]) -> None:
    for row in rows:
        print(f"{row['subject']}")
        print(f"  source {row['source']}, set by {row['set_by']} at {row['set_at']}")
        print(f"  range {row['range_start']} to {row['range_end']}, {row['windows']} windows"
              + (f", {row['events']} events" if row["events"] is not None else ""))
        print(f"  profile {row['object']}")
        if row["features"] is not None:
            print(f"  {'feature':<34} {'metric':<14} threshold")
            for feature in row["features"]:
                learnt = row["thresholds"].get(feature)
                print(f"  {feature:<34} {learnt['metric'] if learnt else '-':<14} "
                      f"{format(learnt['threshold'], '.4g') if learnt else 'statistic default'}")


def cmd_reference_show(stack, args: argparse.Namespace) -> int:
    announced = references_table(_kafka(stack, args).client_config(), "vigil-cli").snapshot()
    chosen = [announced[s] for s in sorted(announced) if _matches(s, args.subject)]
    if args.subject and not chosen:
        _progress(f"vigil: no reference for {args.subject} on {DRIFT_REFERENCES}")
        return 1
    store = _reference_store(stack, args)
    rows = []
    for announcement in chosen:
        try:
            profile = store.get(announcement)
        except Exception as exc:  # noqa: BLE001 (one missing object does not hide the others)
            _progress(f"vigil: {announcement.subject}: profile not readable: {type(exc).__name__}: {exc}")
            profile = None
        rows.append(reference_row(announcement, profile))
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        _progress(f"vigil: no reference announced on {DRIFT_REFERENCES} yet")
    print_references(rows)
    return 0


# --- status ----------------------------------------------------------------------------------------------------
def alert_subject(alert: events_pb2.DriftAlert) -> str:
    """The subject a DriftAlert names, spelled as on vigil.drift.windows."""
    base = f"sensor/{alert.sensor_id}" if alert.sensor_id else f"camera/{alert.camera_id}"
    return subject_of(DriftKey(base, alert.model_name, alert.model_version))


def status_rows(windows: list[events_pb2.DriftWindow], alerts: list[events_pb2.DriftAlert]) -> list[dict]:
    """Per subject: its newest window, the features drifting in it, the alert state after it, and the latest alert
    event read for it (what raised or cleared it)."""
    newest: dict[str, events_pb2.DriftWindow] = {}
    for window in windows:
        held = newest.get(window.subject)
        if held is None or seconds(window.window_end) >= seconds(held.window_end):
            newest[window.subject] = window
    last_alert: dict[str, events_pb2.DriftAlert] = {}
    for alert in alerts:
        subject = alert_subject(alert)
        held = last_alert.get(subject)
        if held is None or seconds(alert.window_end) >= seconds(held.window_end):
            last_alert[subject] = alert
    rows = []
    for subject in sorted(newest):
        w = newest[subject]
        alert = last_alert.get(subject)
        rows.append({
            "subject": subject, "camera_id": w.camera_id, "sensor_id": w.sensor_id, "model_name": w.model.name,
            "model_version": w.model.version, "window_start": iso(seconds(w.window_start)),
            "window_end": iso(seconds(w.window_end)), "status": w.status, "count": w.count,
            "alert_state": w.alert_state or "ok",
            "drifting": [{"feature": s.feature, "metric": s.metric, "score": s.score, "threshold": s.threshold}
                         for s in sorted(w.scores, key=lambda s: -(s.score / s.threshold if s.threshold else 0))
                         if s.drifted],
            "features_scored": len(w.scores),
            "last_alert": ({"state": alert.state, "window_end": iso(seconds(alert.window_end)),
                            "top_features": [{"feature": s.feature, "metric": s.metric, "score": s.score,
                                              "threshold": s.threshold} for s in alert.top_features]}
                           if alert else None),
        })
    return rows


def print_status(rows: list[dict]) -> None:
    print(f"{'subject':<40} {'window (UTC)':<32} {'status':<18} {'events':>7}  {'alert':<9} drifting features")
    for r in rows:
        window = f"{r['window_start']}..{r['window_end'][11:]}"
        drifting = ", ".join(f"{d['feature']} {d['metric']} {d['score']:.3g}/{d['threshold']:.3g}"
                             for d in r["drifting"][:3]) or "-"
        print(f"{r['subject']:<40} {window:<32} {r['status']:<18} {r['count']:>7}  {r['alert_state']:<9} {drifting}")


def cmd_status(stack, args: argparse.Namespace) -> int:
    kafka = _kafka(stack, args)
    windows = []
    for msg in tail_of(kafka, DRIFT_WINDOWS, args.tail, _progress):
        try:
            windows.append(events_pb2.DriftWindow.FromString(msg.value() or b""))
        except Exception:  # noqa: BLE001 (an unreadable message is not a subject)
            continue
    alerts = []
    for msg in tail_of(kafka, MONITORING, args.tail, _progress):
        try:
            event = events_pb2.MonitoringEvent.FromString(msg.value() or b"")
        except Exception:  # noqa: BLE001
            continue
        if event.WhichOneof("detail") == "drift_alert":
            alerts.append(event.drift_alert)
    rows = status_rows(windows, alerts)
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        _progress(f"vigil: no drift window on {DRIFT_WINDOWS} yet (the first closes a window's length after "
                  "events arrive)")
        return 0
    print_status(rows)
    return 0


# --- registration ----------------------------------------------------------------------------------------------
def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local stack's)")


def register(subparsers: argparse._SubParsersAction) -> dict:
    drift = subparsers.add_parser("drift", help="drift status per camera and sensor; reference profiles",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = drift.add_subparsers(dest="drift_command", required=True)
    status = sub.add_parser("status", help="per subject: the newest window, its drifting features, the alert state")
    _common(status)
    status.add_argument("--json", action="store_true", help="one JSON object per subject")
    status.add_argument("--tail", type=int, default=STATUS_TAIL,
                        help=f"messages read from the end of each partition (default {STATUS_TAIL})")
    reference = sub.add_parser("reference", help="reference profiles: set one from a time range, show them")
    ref_sub = reference.add_subparsers(dest="reference_command", required=True)
    set_ = ref_sub.add_parser("set", help="set a reference by hand from the windows of a time range")
    _common(set_)
    set_.add_argument("target", nargs="?", metavar="CAMERA",
                      help="a camera id (or camera/ID), or sensor/ID")
    set_.add_argument("--sensor", metavar="ID", help="a sensor instead of a camera")
    set_.add_argument("--from", dest="start", required=True, metavar="T",
                      help="start of the range, ISO 8601 with a zone, e.g. 2026-11-28T18:00:00Z")
    set_.add_argument("--to", dest="end", required=True, metavar="T", help="end of the range (exclusive)")
    set_.add_argument("--model", metavar="NAME[@VERSION]",
                      help="that model's outputs only (default: the camera's input and every model's outputs)")
    set_.add_argument("--by", help="who sets it (default: $USER)")
    set_.add_argument("--min-windows", type=int, default=MIN_REFERENCE_WINDOWS,
                      help=f"usable windows a subject needs in the range (default {MIN_REFERENCE_WINDOWS}: fewer "
                           "leave no spread to learn thresholds from)")
    set_.add_argument("--min-frames", type=int, default=MIN_FRAMES,
                      help=f"events a window needs to be usable, as the service's VIGIL_DRIFT_MIN_FRAMES "
                           f"(default {MIN_FRAMES})")
    set_.add_argument("--late-s", type=float, default=LATE_S,
                      help=f"read windows published up to this long after the range's end (default {LATE_S:g})")
    set_.add_argument("--bucket", default=BUCKET, help=f"bucket of the profiles (default {BUCKET})")
    show = ref_sub.add_parser("show", help="the references in force")
    _common(show)
    show.add_argument("subject", nargs="?", help="a subject, or a camera id for its input and every model's outputs")
    show.add_argument("--json", action="store_true", help="one JSON object per subject")
    show.add_argument("--bucket", default=BUCKET, help=argparse.SUPPRESS)
    references = {"set": cmd_reference_set, "show": cmd_reference_show}

    def cmd_drift(stack, args: argparse.Namespace) -> int:
        # Library logs only when something is wrong, and on stderr: stdout is the command's output.
        configure_logging("cli", "WARNING")
        try:
            if args.drift_command == "status":
                return cmd_status(stack, args)
            return references[args.reference_command](stack, args)
        except (RuntimeError, TimeoutError) as exc:
            _progress(f"vigil: {exc}")
            return 1

    return {"drift": cmd_drift}
