"""`vigil models import | list | show | promote | rollback | rollout | reconcile`: the model registry in the object
store.

  vigil models import NAME DIR [--parent VERSION]   a converted model dir as the next immutable version
  vigil models list [--json]                        models, their versions, which one is primary
  vigil models show NAME [VERSION] [--lineage]      a version's manifest as JSON (default: the latest), with the
                                                    model's primary and rollout in progress under "registry";
                                                    --lineage: where it comes from, back through its parents (a
                                                    trained version: dataset@version, label tasks, cameras and
                                                    times), and the rollout in progress
  vigil models promote NAME VERSION                 make VERSION the primary; announced on vigil.models
  vigil models rollback NAME                        the previously promoted version becomes primary again
  vigil models rollout NAME VERSION --stage shadow|canary [--share S] [--reason TEXT]
                                                    run VERSION beside the primary: in shadow (every camera's
                                                    frames also go through it) or as a canary serving a share
                                                    S (default 0.25) of the cameras, the primary as their
                                                    shadow; announced on vigil.models under NAME/rollout
  vigil models rollout NAME --end [--reason TEXT]   stop the rollout in progress
  vigil models reconcile [--grace-s S]              announce the primaries and rollouts vigil.models lacks (a
                                                    change whose announcement was lost); the inference service
                                                    does it too"""
from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import sys
from pathlib import Path

from libs.common.objectstore import object_store_client
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import CATALOG, MODELS, ensure_topics
from libs.model_registry.announcements import (
    AnnouncementFailed, announce, announce_rollout, announcements_table, primaries, primary_change_announcements,
    registry_rollout_announcement, repair_announcements, repair_rollout_announcements, rollout_state,
    rollouts,
)
from libs.model_registry.history import Rollout
from libs.model_registry.manifest import RegistryError
from libs.model_registry.store import BUCKET, ModelRegistry
from protos import events_pb2


def _registry(stack, args: argparse.Namespace) -> ModelRegistry:
    settings = ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                   access_key=stack.config.s3_access_key, secret_key=stack.config.s3_secret_key)
    return ModelRegistry(object_store_client(settings), args.bucket)


def _who() -> str:
    return f"cli/{getpass.getuser()}"


def announce_changes(kafka: KafkaSettings, messages: list[events_pb2.ModelVersion],
                     rollout: events_pb2.ModelVersion | None = None) -> None:
    """The primaries' announcements in order, then the rollout's (under NAME/rollout), if any."""
    config = kafka.client_config()
    ensure_topics(config, kafka.replication_factor, tuple(s for s in CATALOG if s.name == MODELS))
    try:
        table = announcements_table(config, "vigil-cli")
        announce(table, messages)
        if rollout is not None:
            announce_rollout(table, rollout)
    except AnnouncementFailed as exc:
        raise RegistryError(f"the change is recorded but not announced ({exc}); the inference service's "
                            f"registry follower announces it within VIGIL_INFERENCE_REGISTRY_RECONCILE_S") from exc


def _announce_change(stack, args, registry: ModelRegistry, name: str, retired: int | None, primary: int,
                     action: str, rollout_before: Rollout | None = None) -> None:
    messages, ended = primary_change_announcements(registry, name, retired, primary, action, _who(), rollout_before)
    announce_changes(_kafka(stack, args), messages, ended)


def _kafka(stack, args) -> KafkaSettings:
    return KafkaSettings(bootstrap_servers=args.bootstrap or stack.config.kafka_bootstrap)


def cmd_reconcile(stack, args: argparse.Namespace) -> int:
    kafka = _kafka(stack, args)
    registry = _registry(stack, args)
    table = announcements_table(kafka.client_config(), "vigil-cli")
    snapshot = table.snapshot()
    announced = {name: int(m.model.version)
                 for name, m in primaries(snapshot.values(), registry.bucket).items()}
    messages = repair_announcements(registry, announced, args.grace_s)
    if messages:
        announce_changes(kafka, messages)
    for message in messages:
        print(f"{message.model.name} version {message.model.version} announced as primary")
    announced_rollouts = {name: rollout_state(m) for name, m in rollouts(snapshot.items(), registry.bucket).items()}
    rollout_messages = repair_rollout_announcements(registry, announced_rollouts, args.grace_s)
    for message in rollout_messages:
        announce_changes(kafka, [], message)
        print(f"{message.model.name} version {message.model.version} announced as {message.stage} (rollout)")
    if not messages and not rollout_messages:
        print(f"every primary is announced on {MODELS}, and every rollout")
    return 0


def cmd_import(stack, args: argparse.Namespace) -> int:
    manifest = _registry(stack, args).import_dir(args.name, args.dir, _who(), args.parent)
    size = sum(f["size"] for f in manifest["files"])
    print(f"{args.name} version {manifest['version']} imported ({len(manifest['files'])} files, {size} bytes, "
          f"{manifest['precision']})")
    return 0


def cmd_list(stack, args: argparse.Namespace) -> int:
    registry = _registry(stack, args)
    rows = [{"name": name, "versions": registry.versions(name), "primary": registry.primary(name)}
            for name in registry.models()]
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    print(f"{'model':<32} {'primary':>8}  versions")
    for row in rows:
        versions = ", ".join(f"{v}*" if v == row["primary"] else str(v) for v in row["versions"])
        print(f"{row['name']:<32} {row['primary'] or '-':>8}  {versions}")
    return 0


def lineage_lines(registry: ModelRegistry, name: str, version: int | None) -> list[str]:
    """A version's lineage as text, then its parents': who imported it when, and for a trained version (lineage
    written by services/training/job.py) the gate's verdict, the dataset version, the label tasks, the cameras
    and the capture times it learnt from."""
    lines, seen = [], set()
    manifest = registry.manifest(name, version)
    while manifest is not None and manifest["version"] not in seen:
        seen.add(manifest["version"])
        lineage, metadata = manifest["lineage"], manifest.get("model_json", {})
        derived, gate = lineage.get("derived_from") or {}, metadata.get("gate")
        verdict = (f"; {'eligible' if gate['eligible'] else 'refused'} by the gate against {gate['champion']}"
                   if gate else "")
        lines.append(f"{'<- ' if lines else ''}{name} version {manifest['version']} ({manifest['source_version']}): "
                     f"imported by {lineage['imported_by']} at {lineage['imported_at']}{verdict}")
        if derived.get("dataset"):
            lines.append(f"     trained on {derived['dataset']}@{derived['dataset_version']} (seed "
                         f"{derived.get('seed')}, code {derived.get('code_version')}); test mAP@0.5 "
                         f"{derived['metrics']['candidate_map50']:.4f} against the champion's "
                         f"{derived['metrics']['champion_map50']:.4f}")
        if data := derived.get("data"):
            lines.append(f"     {data['items']} items from {data['source_task_ids']} label tasks, captured "
                         f"{data['captured_from']} .. {data['captured_to']}")
            for camera, seen_by in data["cameras"].items():
                lines.append(f"       camera {camera or '(none)'}: {seen_by['items']} items, "
                             f"{seen_by['captured_from']} .. {seen_by['captured_to']}")
        elif derived.get("parent") and not derived.get("dataset"):
            lines.append(f"     derived from {derived['parent']}")
        parent = lineage.get("parent_version")
        manifest = registry.manifest(name, parent) if parent else None
    return lines


def rollout_line(name: str, rollout: Rollout | None) -> str:
    if rollout is None:
        return f"{name}: no rollout in progress"
    where = "in shadow" if rollout.stage == "shadow" else f"as a canary on {rollout.share:.0%} of the cameras"
    return (f"{name}: version {rollout.version} rolled out {where} since {rollout.at} by {rollout.by}"
            + (f" ({rollout.reason})" if rollout.reason else ""))


def cmd_show(stack, args: argparse.Namespace) -> int:
    registry = _registry(stack, args)
    if args.lineage:
        rollout = registry.rollout(args.name)
        print("\n".join([*lineage_lines(registry, args.name, args.version),
                         *([rollout_line(args.name, rollout)] if rollout else [])]))
        return 0
    manifest = registry.manifest(args.name, args.version)
    rollout = registry.rollout(args.name)
    # Where the model stands now, beside the version's manifest: its primary and the rollout in progress.
    manifest["registry"] = {"primary": registry.primary(args.name),
                            "rollout": None if rollout is None else dataclasses.asdict(rollout)}
    print(json.dumps(manifest, indent=2))
    return 0


def cmd_promote(stack, args: argparse.Namespace) -> int:
    registry = _registry(stack, args)
    rollout = registry.rollout(args.name)
    previous = registry.promote(args.name, args.version, _who())
    _announce_change(stack, args, registry, args.name, previous, args.version, "promote", rollout)
    print(f"{args.name} version {args.version} is primary" + (f" (was {previous})" if previous else ""))
    return 0


def cmd_rollback(stack, args: argparse.Namespace) -> int:
    registry = _registry(stack, args)
    rollout = registry.rollout(args.name)
    retired, restored = registry.rollback(args.name, _who())
    _announce_change(stack, args, registry, args.name, retired, restored, "rollback", rollout)
    print(f"{args.name} version {restored} is primary again (version {retired} retired)")
    return 0


CANARY_SHARE = 0.25  # a canary's share of cameras without --share


def cmd_rollout(stack, args: argparse.Namespace) -> int:
    """Writes the rollout stage to the model's history, then announces it (like promote)."""
    registry = _registry(stack, args)
    if args.end:
        if args.version is not None or args.stage:
            raise RegistryError("--end takes the model's name only")
        ended = registry.end_rollout(args.name, _who(), args.reason)
        version, stage, share, action = ended.version, "retired", 0.0, "end_rollout"
    else:
        if args.version is None or not args.stage:
            raise RegistryError("a rollout needs VERSION and --stage shadow|canary (or --end)")
        share = args.share if args.share is not None else (0.0 if args.stage == "shadow" else CANARY_SHARE)
        registry.set_rollout(args.name, args.version, args.stage, _who(), share, args.reason)
        version, stage, action = args.version, args.stage, "rollout"
    message = registry_rollout_announcement(registry, args.name, version, stage, action, _who(), share, args.reason)
    announce_changes(_kafka(stack, args), [], message)
    print(rollout_line(args.name, registry.rollout(args.name)) if not args.end
          else f"{args.name}: rollout of version {version} ended")
    return 0


def register(subparsers: argparse._SubParsersAction) -> dict:
    models = subparsers.add_parser("models", help="the model registry: import, list, show, promote, rollback, "
                                   "rollout, reconcile",
                                   description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    models.add_argument("--bucket", default=BUCKET, help=f"the registry's bucket (default {BUCKET})")
    models.add_argument("--bootstrap", help="Kafka bootstrap servers (default: the local stack's)")
    sub = models.add_subparsers(dest="models_command", required=True)
    imp = sub.add_parser("import", help="upload a converted model dir as the next version")
    imp.add_argument("name")
    imp.add_argument("dir", type=Path, help="a dir with model.xml, model.bin, model.json (and labels.txt)")
    imp.add_argument("--parent", type=int, help="the registry version this one derives from "
                     "(default: found from model.json's lineage)")
    listing = sub.add_parser("list", help="models, versions, and the primary of each (marked *)")
    listing.add_argument("--json", action="store_true", help="one JSON object per model")
    show = sub.add_parser("show", help="a version's manifest as JSON")
    show.add_argument("name")
    show.add_argument("version", type=int, nargs="?", help="default: the latest")
    show.add_argument("--lineage", action="store_true", help="where the version comes from, as text")
    promote = sub.add_parser("promote", help="make a version the primary")
    promote.add_argument("name")
    promote.add_argument("version", type=int)
    rollback = sub.add_parser("rollback", help="promote the previously promoted version again")
    rollback.add_argument("name")
    rollout = sub.add_parser("rollout", help="run a candidate version in shadow or as a canary, or --end it")
    rollout.add_argument("name")
    rollout.add_argument("version", type=int, nargs="?")
    rollout.add_argument("--stage", choices=("shadow", "canary"))
    rollout.add_argument("--share", type=float, help=f"canary: the share of cameras it serves, in (0, 1] "
                         f"(default {CANARY_SHARE})")
    rollout.add_argument("--reason", default="", help="why, recorded in the history and the announcement")
    rollout.add_argument("--end", action="store_true", help="stop the rollout in progress")
    reconcile = sub.add_parser("reconcile", help="announce the primaries vigil.models lacks")
    reconcile.add_argument("--grace-s", type=float, default=30.0,
                           help="leave changes younger than this alone: their writer may be announcing them")
    commands = {"import": cmd_import, "list": cmd_list, "show": cmd_show, "promote": cmd_promote,
                "rollback": cmd_rollback, "rollout": cmd_rollout, "reconcile": cmd_reconcile}

    def cmd_models(stack, args: argparse.Namespace) -> int:
        try:
            return commands[args.models_command](stack, args)
        except RegistryError as exc:
            print(f"vigil: {exc}", file=sys.stderr)
            return 1

    return {"models": cmd_models}
