"""`vigil annotations status | list | export | users`: the annotation queue, its labels, and the people who label.

  vigil annotations status [--json]             tasks per state and selection rule, the queue's depth and oldest
                                                open task, labels submitted and accepted (last hour, in all),
                                                agreement of the tasks labelled twice
  vigil annotations list [--state S] [--reason R] [--camera C] [--limit N] [--json]
                                                tasks, open ones first by priority
  vigil annotations export --format coco|label-studio [--out FILE] [--schema VERSION] [--image-base URL]
                                                COCO: the latest accepted label of every task, categories from the
                                                label schema (the current one by default); Label Studio: every task
                                                (or --state), the model's proposals as predictions, accepted labels
                                                as annotations. Standard output without --out.
  vigil annotations users add NAME --role annotator|reviewer|admin [--replace]
                                                prints the new user's sign-in token, once (only its digest is kept)
  vigil annotations users list [--json] | users remove NAME

status, list and export read Kafka only (the compacted vigil.annotation.tasks and every label event on
vigil.annotations from the beginning), so they work whether or not the service is running; export also reads the
label schema, and users the user list, from the annotation bucket."""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from confluent_kafka import Consumer, Message, TopicPartition

from cli.drift import iso, read_partitions
from libs.common.compacted import CompactedTable
from libs.common.logs import configure_logging
from libs.common.objectstore import ensure_bucket, object_store_client
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import ANNOTATION_LABELS, ANNOTATION_TASKS
from protos import events_pb2
from services.annotation.exports import latest_accepted, to_coco, to_label_studio
from services.annotation.schemas import LabelSchema, SchemaStore, UnknownSchemaVersion, default_schema, model_dir_labels
from services.annotation.settings import AnnotationSettings
from services.annotation.web.users import ROLES, UnknownUser, UserExists, UserStore

BUCKET = AnnotationSettings.model_fields["bucket"].default
STATES = ("open", "leased", "submitted", "accepted", "rejected")
# The queue's depth: tasks someone still has to label.
WAITING = ("open", "leased")
FORMATS = ("coco", "label-studio")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _seconds(ts) -> float:
    return ts.seconds + ts.nanos / 1e9


# --- reading Kafka -------------------------------------------------------------------------------------------------
def _topic_exists(kafka: KafkaSettings, topic: str) -> bool:
    consumer = Consumer({**kafka.client_config(), "group.id": f"vigil-annotations-cli-{uuid.uuid4().hex[:8]}"})
    try:
        found = consumer.list_topics(topic, timeout=10).topics.get(topic)
        return found is not None and found.error is None
    finally:
        consumer.close()


def read_tasks(kafka: KafkaSettings) -> dict[str, events_pb2.AnnotationTask]:
    """Every task as the compacted topic holds it now (empty before the service made its topics)."""
    if not _topic_exists(kafka, ANNOTATION_TASKS):
        return {}
    table: CompactedTable[events_pb2.AnnotationTask] = CompactedTable(kafka.client_config(), ANNOTATION_TASKS,
                                                                      client_id="vigil-annotations-cli")
    return table.snapshot(timeout_s=120)


def whole_topic(kafka: KafkaSettings, topic: str) -> Iterator[Message]:
    """Every message of the topic, from the beginning to the end each partition has now."""
    consumer = Consumer({**kafka.client_config(), "group.id": f"vigil-annotations-cli-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            return
        starts, stops = {}, {}
        for p in sorted(metadata.partitions):
            starts[p], stops[p] = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
        yield from read_partitions(consumer, topic, starts, stops, progress=_progress)
    finally:
        consumer.close()


def read_labels(kafka: KafkaSettings) -> list[events_pb2.AnnotationLabel]:
    """Every label event, in each task's order (the topic is keyed by task id); unreadable ones skipped."""
    labels = []
    for msg in whole_topic(kafka, ANNOTATION_LABELS):
        try:
            labels.append(events_pb2.AnnotationLabel.FromString(msg.value() or b""))
        except Exception:  # noqa: BLE001 (a message that is not a label is not one to count)
            continue
    return labels


# --- status ------------------------------------------------------------------------------------------------------
def status_summary(tasks: Iterable[events_pb2.AnnotationTask], labels: list[events_pb2.AnnotationLabel],
                   now: float) -> dict:
    tasks = list(tasks)
    by_state = Counter(t.state for t in tasks)
    waiting = [t for t in tasks if t.state in WAITING]
    captured = [_seconds(t.captured_at) for t in waiting if t.captured_at.seconds]
    hour_ago = now - 3600
    # Counted by label id: a submission's later status changes (if republished) are the same submission.
    submitted_at: dict[str, float] = {}
    for l in labels:
        if l.kind == "submission":
            submitted_at.setdefault(l.label_id, _seconds(l.envelope.event_time))
    accepted = latest_accepted(labels)
    agreements = [l.agreement for l in labels if l.HasField("agreement")]
    return {
        "tasks": len(tasks),
        "by_state": {state: by_state.get(state, 0) for state in (*STATES, *sorted(set(by_state) - set(STATES)))},
        "by_reason": dict(sorted(Counter(t.reason for t in tasks).items())),
        "queue_depth": len(waiting),
        "oldest_waiting_captured_at": iso(min(captured)) if captured else None,
        "labelled_twice": sum(1 for t in tasks if t.labels_wanted >= 2),
        # Submitted and complete (every wanted label in) yet not settled: a reviewer's to decide.
        "awaiting_review": sum(1 for t in tasks if t.state == "submitted"
                               and len(t.submission_ids) >= max(t.labels_wanted, 1)),
        "submissions": len(submitted_at),
        "submissions_last_hour": sum(1 for at in submitted_at.values() if at >= hour_ago),
        "accepted_tasks": len(accepted),
        "accepted_last_hour": sum(1 for l in accepted.values() if _seconds(l.envelope.event_time) >= hour_ago),
        "accepted_boxes": sum(len(l.labels) for l in accepted.values()),
        "agreement": ({"measured": len(agreements), "mean_f1": sum(agreements) / len(agreements),
                       "below_0_8": sum(1 for a in agreements if a < 0.8)} if agreements else None),
    }


def print_status(summary: dict) -> None:
    print(f"tasks           {summary['tasks']}  (" + ", ".join(f"{s} {n}" for s, n in summary["by_state"].items()) + ")")
    print(f"queue depth     {summary['queue_depth']} open or leased"
          + (f", oldest captured {summary['oldest_waiting_captured_at']}" if summary["oldest_waiting_captured_at"]
             else ""))
    print("by rule         " + (", ".join(f"{r or '-'} {n}" for r, n in summary["by_reason"].items()) or "-"))
    print(f"review          {summary['awaiting_review']} awaiting a reviewer; {summary['labelled_twice']} tasks "
          "labelled twice")
    print(f"labels          {summary['submissions']} submitted ({summary['submissions_last_hour']} in the last hour), "
          f"{summary['accepted_tasks']} tasks accepted ({summary['accepted_last_hour']} in the last hour), "
          f"{summary['accepted_boxes']} boxes")
    agreement = summary["agreement"]
    print("agreement       " + (f"mean F1 {agreement['mean_f1']:.3f} over {agreement['measured']} tasks labelled "
                                f"twice, {agreement['below_0_8']} below 0.8" if agreement else "none measured yet"))


# --- list --------------------------------------------------------------------------------------------------------
def task_rows(tasks: Iterable[events_pb2.AnnotationTask], labels: list[events_pb2.AnnotationLabel],
              state: str | None = None, reason: str | None = None, camera: str | None = None,
              limit: int | None = None) -> list[dict]:
    """The tasks chosen, waiting ones first (highest priority first), then the others newest first."""
    accepted = latest_accepted(labels)
    chosen = [t for t in tasks if (state is None or t.state == state) and (reason is None or t.reason == reason)
              and (camera is None or t.camera_id == camera)]
    chosen.sort(key=lambda t: (t.state not in WAITING, -t.priority if t.state in WAITING else 0,
                               -_seconds(t.captured_at), t.task_id))
    rows = []
    for t in chosen[:limit]:
        label = accepted.get(t.task_id)
        rows.append({
            "task_id": t.task_id, "state": t.state, "reason": t.reason, "reason_detail": t.reason_detail,
            "camera_id": t.camera_id, "captured_at": iso(_seconds(t.captured_at)) if t.captured_at.seconds else None,
            "priority": t.priority, "model": f"{t.model.name}@{t.model.version}" if t.model.name else "",
            "proposals": len(t.proposals), "labels_wanted": t.labels_wanted, "submissions": len(t.submission_ids),
            "leased_by": [lease.annotator for lease in t.leases],
            "accepted": ({"verdict": label.verdict, "boxes": len(label.labels), "annotator": label.annotator,
                          "reviewer": label.reviewer} if label is not None else None),
            "image": f"s3://{t.frame.bucket}/{t.frame.key}" if t.frame.key else None,
        })
    return rows


def print_tasks(rows: list[dict]) -> None:
    print(f"{'task':<36}  {'state':<9} {'rule':<19} {'camera':<14} {'captured (UTC)':<20} {'prio':>5} "
          f"{'props':>5}  labels")
    for r in rows:
        accepted = r["accepted"]
        answer = (f"{accepted['verdict']}, {accepted['boxes']} boxes" if accepted
                  else f"{r['submissions']}/{r['labels_wanted']} in" + (f", leased by {', '.join(r['leased_by'])}"
                                                                       if r["leased_by"] else ""))
        print(f"{r['task_id']:<36}  {r['state']:<9} {r['reason']:<19} {r['camera_id']:<14} "
              f"{r['captured_at'] or '-':<20} {r['priority']:>5.2f} {r['proposals']:>5}  {answer}")


# --- export ------------------------------------------------------------------------------------------------------
def export_schema(store: SchemaStore | None, version: str | None, labels: list[events_pb2.AnnotationLabel],
                  model_dir: Path | None = None) -> LabelSchema:
    """The schema whose classes a COCO export's categories are: the version asked for, else the current one, else
    (none published yet) the default model's labels, else the classes the labels use."""
    if store is not None and version is not None:
        return store.get(version)
    current = store.current() if store is not None else None
    if current is not None:
        return current
    if model_dir is not None and (model_dir / "model.json").is_file():
        return default_schema(model_dir_labels(model_dir), version="unpublished")
    used = sorted({d.label for label in labels for d in label.labels if d.label}) or ["object"]
    return LabelSchema(version="unpublished", classes=tuple(used))


def write_output(document, out: Path | None) -> None:
    """JSON to standard output, or to `out` (written whole, then renamed: a reader never sees half a file)."""
    text = json.dumps(document, indent=1)
    if out is None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
        return
    staging = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    staging.write_text(text + "\n")
    staging.replace(out)


def cmd_export(stack, args: argparse.Namespace) -> int:
    kafka = _kafka(stack, args)
    labels = read_labels(kafka)
    if args.format == "coco":
        try:
            schema = export_schema(_schema_store(stack, args), args.schema, labels, _default_model_dir())
        except UnknownSchemaVersion:
            _progress(f"vigil: no label schema version {args.schema} in s3://{args.bucket}/schemas/")
            return 2
        document = to_coco(labels, schema)
        said = (f"{len(document['images'])} images, {len(document['annotations'])} boxes, "
                f"{len(document['categories'])} categories (schema {schema.version})")
    else:
        chosen = [t for t in read_tasks(kafka).values() if args.state is None or t.state == args.state]
        # Boxes go out in percent of the image: a task without its size cannot be exported (said, not hidden).
        tasks = sorted((t for t in chosen if t.width and t.height), key=lambda t: (_seconds(t.captured_at), t.task_id))
        if len(tasks) < len(chosen):
            _progress(f"vigil: {len(chosen) - len(tasks)} tasks without an image size left out")
        base = args.image_base.rstrip("/") if args.image_base else None
        document = to_label_studio(tasks, labels, image_url=(lambda ref: f"{base}/{ref.key}") if base else
                                   (lambda ref: f"s3://{ref.bucket}/{ref.key}"))
        said = (f"{len(document)} tasks, {sum(1 for d in document if 'annotations' in d)} with an accepted label")
    write_output(document, args.out)
    _progress(f"vigil: exported {said}" + (f" to {args.out}" if args.out else ""))
    return 0


def _default_model_dir() -> Path | None:
    try:  # the CLI, like the stack, may run where the default model was built
        from services.inference.model_dirs import default_detector_dir
        return default_detector_dir()
    except Exception:  # noqa: BLE001 (no cache: the labels' own classes are used)
        return None


# --- users -------------------------------------------------------------------------------------------------------
def cmd_users(stack, args: argparse.Namespace) -> int:
    store = UserStore(stack_s3_client(stack), args.bucket)
    if args.users_command == "add":
        ensure_bucket(store.client, args.bucket)
        who = args.by or os.environ.get("USER") or getpass.getuser()
        try:
            token = store.add(args.name, args.role, replace=args.replace, by=who)
        except (UserExists, ValueError) as exc:
            _progress(f"vigil: {exc}")
            return 2
        _progress(f"vigil: {args.name} added as {args.role}; their sign-in token follows, shown this once only")
        print(token)
        return 0
    if args.users_command == "remove":
        try:
            store.remove(args.name)
        except UnknownUser:
            _progress(f"vigil: no user {args.name!r}")
            return 1
        _progress(f"vigil: {args.name} removed; their token stops working within seconds")
        return 0
    records = store.list() if store.client.bucket_exists(args.bucket) else []
    if args.json:
        for record in records:
            print(json.dumps(record.__dict__))
        return 0
    if not records:
        _progress("vigil: no users yet (vigil annotations users add NAME --role admin)")
        return 0
    print(f"{'name':<24} {'role':<10} {'added (UTC)':<26} by")
    for record in records:
        print(f"{record.name:<24} {record.role:<10} {record.created_at:<26} {record.created_by}")
    return 0


# --- settings ----------------------------------------------------------------------------------------------------
def _kafka(stack, args: argparse.Namespace) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=args.bootstrap or stack.config.kafka_bootstrap)


def stack_s3_client(stack):
    """A client of the local stack's object store."""
    settings = ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                   access_key=stack.config.s3_access_key, secret_key=stack.config.s3_secret_key)
    return object_store_client(settings)


def _schema_store(stack, args: argparse.Namespace) -> SchemaStore | None:
    client = stack_s3_client(stack)
    return SchemaStore(client, args.bucket) if client.bucket_exists(args.bucket) else None


# --- registration ------------------------------------------------------------------------------------------------
def register(subparsers: argparse._SubParsersAction) -> dict:
    annotations = subparsers.add_parser("annotations", help="the annotation queue, its labels and exports, users",
                                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = annotations.add_subparsers(dest="annotations_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local stack's)")
        parser.add_argument("--bucket", default=BUCKET, help=f"the annotation bucket (default {BUCKET})")
        return parser

    status = common(sub.add_parser("status", help="tasks per state and rule, queue depth, labels, agreement"))
    status.add_argument("--json", action="store_true", help="one JSON object")
    listing = common(sub.add_parser("list", help="tasks, open ones first by priority"))
    listing.add_argument("--state", choices=STATES)
    listing.add_argument("--reason", help="a selection rule: uncertain, shadow_disagreement, rare_class, drift, "
                                          "audit, imported")
    listing.add_argument("--camera")
    listing.add_argument("--limit", type=int, default=50, help="at most this many (default 50; 0: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per task")
    export = common(sub.add_parser("export", help="accepted labels as COCO, or tasks as Label Studio JSON"))
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", type=Path, help="write to this file (default: standard output)")
    export.add_argument("--schema", metavar="VERSION", help="COCO: the label schema version whose classes are the "
                                                            "categories (default: the current one)")
    export.add_argument("--state", choices=STATES, help="Label Studio: only tasks in this state")
    export.add_argument("--image-base", metavar="URL", help="Label Studio: images as URL/<key in the bucket> "
                                                            "(default: s3://bucket/key)")
    users = sub.add_parser("users", help="the people who label: add (prints a token once), list, remove")
    users_sub = users.add_subparsers(dest="users_command", required=True)
    add = common(users_sub.add_parser("add", help="add a user; prints their sign-in token, once"))
    add.add_argument("name")
    add.add_argument("--role", required=True, choices=ROLES)
    add.add_argument("--replace", action="store_true", help="an existing user gets this role and a new token")
    add.add_argument("--by", help="who adds them (default: $USER)")
    common(users_sub.add_parser("list", help="users and their roles (never tokens)")).add_argument(
        "--json", action="store_true", help="one JSON object per user")
    common(users_sub.add_parser("remove", help="remove a user: their token stops working")).add_argument("name")

    def cmd_annotations(stack, args: argparse.Namespace) -> int:
        # Library logs only when something is wrong, and on stderr: stdout is the command's output.
        configure_logging("cli", "WARNING")
        try:
            if args.annotations_command == "users":
                return cmd_users(stack, args)
            if args.annotations_command == "export":
                return cmd_export(stack, args)
            kafka = _kafka(stack, args)
            tasks, labels = read_tasks(kafka), read_labels(kafka)
            if args.annotations_command == "status":
                summary = status_summary(tasks.values(), labels, time.time())
                if args.json:
                    print(json.dumps(summary))
                else:
                    print_status(summary)
                return 0
            rows = task_rows(tasks.values(), labels, args.state, args.reason, args.camera, args.limit or None)
            if args.json:
                for row in rows:
                    print(json.dumps(row))
            elif rows:
                print_tasks(rows)
            else:
                _progress(f"vigil: no task on {ANNOTATION_TASKS}" + (" matches" if tasks else " yet"))
            return 0
        except (RuntimeError, TimeoutError) as exc:
            _progress(f"vigil: {exc}")
            return 1

    return {"annotations": cmd_annotations}
