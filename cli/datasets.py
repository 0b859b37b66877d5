"""`vigil datasets list | show | log | diff | tag | export | import | gc`: versioned datasets in the object store.

  vigil datasets list [--json]                  datasets, their branches and tags, each head's items
  vigil datasets show DATASET[@REF] [--json]    a version (default: main): parents, message, author, time, schema
                                                version and statistics (items, boxes per class, per camera, split)
  vigil datasets log DATASET [--ref REF] [--limit N] [--json]
                                                versions from REF (default main) back to the first, newest first
  vigil datasets diff DATASET@V1 DATASET@V2 [--json]
                                                exact, item by item: added, removed, relabelled (and moved split,
                                                changed otherwise); --json lists every item and both label sets
  vigil datasets tag DATASET TAG REF            name a version for good (a tag never moves)
  vigil datasets export DATASET[@VERSION] --format coco|yolo --out DIR
                                                COCO: DIR/annotations.json beside the images (<sha256>.<ext>), each
                                                image's split a field of its own; YOLO: images/<split>,
                                                labels/<split>/*.txt, data.yaml (services/datasets/formats.py)
  vigil datasets import DATASET COCO_JSON --images DIR [--message M] [--format coco|label-studio]
                        [--branch B] [--replace] [--camera C] [--no-blur-faces] [--inference HOST:PORT]
                                                the labelled images as a new version on B (default main), merged
                                                by item id into its head (--replace: exactly these items); prints
                                                the new version id. Faces are blurred (CenterFace, served by
                                                inference over gRPC) before anything is stored; --no-blur-faces
                                                only for images known to show no one
  vigil datasets gc [--grace H] [--dry-run] [--json]
                                                delete blobs no version references and manifests no ref reaches,
                                                once older than H hours (default 24); never a referenced blob

Every command that changes or exports data (import, tag, export, gc) records who did it as a DatasetVersion on
vigil.datasets (action, actor: the OS user or --as, message, statistics); an import also announces its commit,
as the datasets service does for the versions it commits. The change is made first: when Kafka cannot take the
event, the command says so and exits 1, the change stays. Long work (import, export) reports progress on stderr;
stdout is the command's answer only."""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys
from datetime import timedelta
from pathlib import Path

from minio.error import S3Error
from urllib3.exceptions import HTTPError as ConnectionFailed

from libs.common.kafka import DeliveringProducer, Outbound, producer_config
from libs.common.logs import configure_logging
from libs.common.objectstore import ObjectIntegrityError, ensure_bucket, object_store_client
from libs.common.settings import KafkaSettings, ObjectStoreSettings
from libs.common.topics import CATALOG, DATASETS, ensure_topics
from protos import events_pb2
from services.datasets.diff import diff
from services.datasets.events import dataset_event, gc_event
from services.datasets.formats import (ImportRefused, ImportResult, export_coco, export_yolo, import_coco,
                                       import_label_studio)
from services.datasets.gc import collect_garbage
from services.datasets.manifest import CorruptManifest, InvalidName, Manifest, check_name
from services.datasets.settings import DatasetsSettings
from services.datasets.store import CommitRefused, DatasetStore, RefConflict, TagExists, UnknownRef

BUCKET = DatasetsSettings.model_fields["bucket"].default
FORMATS = ("coco", "yolo")
IMPORT_FORMATS = ("coco", "label-studio")


class BadInput(ValueError):
    """What the user typed cannot be used (exit code 2)."""


class AuditNotDelivered(RuntimeError):
    """The change is made, its event on vigil.datasets is not (exit code 1)."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(what: str):
    def report(done: int, total: int) -> None:
        _say(f"vigil: {what} {done}/{total} images")
    return report


def dataset_ref(text: str, default: str = "main") -> tuple[str, str]:
    """DATASET[@REF] -> (dataset, ref)."""
    dataset, _, ref = text.partition("@")
    try:
        check_name(dataset)
    except InvalidName as exc:
        raise BadInput(str(exc)) from None
    return dataset, ref or default


# --- connections ---------------------------------------------------------------------------------------------------
def _s3(stack):
    settings = ObjectStoreSettings(endpoint=f"127.0.0.1:{stack.config.ports.s3}",
                                   access_key=stack.config.s3_access_key, secret_key=stack.config.s3_secret_key)
    return object_store_client(settings)


def _store(stack, args: argparse.Namespace, create: bool = False) -> DatasetStore:
    client = _s3(stack)
    if create:
        ensure_bucket(client, args.bucket)
    elif not client.bucket_exists(args.bucket):
        raise BadInput(f"no dataset store: the bucket {args.bucket} does not exist yet (vigil datasets import ...)")
    return DatasetStore(client, args.bucket)


def _actor(args: argparse.Namespace) -> str:
    return getattr(args, "as_", None) or getpass.getuser()


def announce(stack, args: argparse.Namespace, events: list[events_pb2.DatasetVersion]) -> None:
    """Delivers the audit events to vigil.datasets (keyed by dataset), or AuditNotDelivered."""
    kafka = KafkaSettings(bootstrap_servers=args.bootstrap or stack.config.kafka_bootstrap)
    try:
        ensure_topics(kafka.client_config(), kafka.replication_factor,
                      tuple(spec for spec in CATALOG if spec.name == DATASETS), timeout_s=15)
        producer = DeliveringProducer(producer_config(kafka, "vigil-datasets-cli", **{"message.timeout.ms": 20000}))
        for event in events:
            producer.produce(Outbound(DATASETS, event.SerializeToString(), (event.dataset or None) and
                                      event.dataset.encode()))
        producer.flush(30)
    except Exception as exc:  # noqa: BLE001 (DeliveryFailed, a KafkaException, a timeout: all this one)
        actions = ", ".join(sorted({e.action for e in events}))
        raise AuditNotDelivered(f"done, but its audit event ({actions}) did not reach {DATASETS} at "
                                f"{kafka.bootstrap_servers}: {exc}") from exc


# --- reading -------------------------------------------------------------------------------------------------------
def version_row(manifest: Manifest) -> dict:
    s = manifest.statistics
    return {"dataset": manifest.dataset, "version": manifest.version, "parents": list(manifest.parents),
            "created_at": manifest.created_at, "author": manifest.author, "message": manifest.message,
            "schema_version": manifest.schema_version, "items": s["items"],
            "boxes": sum(s["boxes_per_class"].values()), "statistics": s}


def cmd_list(stack, args: argparse.Namespace) -> int:
    store = _store(stack, args)
    rows = []
    for dataset in store.datasets():
        branches, tags = store.branches(dataset), store.tags(dataset)
        head = store.read_manifest(dataset, branches["main"]) if "main" in branches else None
        rows.append({"dataset": dataset, "branches": branches, "tags": tags,
                     "main_items": head.statistics["items"] if head else None})
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        _say(f"vigil: no dataset in s3://{args.bucket} yet")
        return 0
    print(f"{'dataset':<24} {'items (main)':>12}  branches / tags")
    for row in rows:
        refs = [f"{b}={v}" for b, v in row["branches"].items()] + [f"tag {t}={v}" for t, v in row["tags"].items()]
        items = "-" if row["main_items"] is None else row["main_items"]
        print(f"{row['dataset']:<24} {items:>12}  {', '.join(refs)}")
    return 0


def _counts(title: str, counts: dict) -> str:
    return f"{title:<16}" + (", ".join(f"{k or '(none)'} {v}" for k, v in counts.items()) or "-")


def cmd_show(stack, args: argparse.Namespace) -> int:
    dataset, ref = dataset_ref(args.dataset)
    manifest = _store(stack, args).version(dataset, ref)
    row = version_row(manifest)
    if args.json:
        print(json.dumps(row))
        return 0
    s = manifest.statistics
    print(f"{dataset}@{manifest.version}" + (f"  ({ref})" if ref != manifest.version else ""))
    print(f"{'parents':<16}{', '.join(manifest.parents) or '-'}")
    print(f"{'created':<16}{manifest.created_at} by {manifest.author or '-'}")
    print(f"{'message':<16}{manifest.message or '-'}")
    print(f"{'schema version':<16}{manifest.schema_version or '-'}")
    print(f"{'items':<16}{s['items']} ({row['boxes']} boxes)")
    print(_counts("boxes per class", s["boxes_per_class"]))
    print(_counts("items per split", s["items_per_split"]))
    print(_counts("per camera", s["items_per_camera"]))
    return 0


def cmd_log(stack, args: argparse.Namespace) -> int:
    dataset, ref = dataset_ref(args.dataset, args.ref)
    versions = _store(stack, args).log(dataset, ref, limit=args.limit or None)
    if args.json:
        for manifest in versions:
            row = version_row(manifest)
            row.pop("statistics")
            print(json.dumps(row))
        return 0
    print(f"{'version':<17} {'created (UTC)':<28} {'items':>7} {'boxes':>7}  {'author':<16} message")
    for manifest in versions:
        row = version_row(manifest)
        print(f"{manifest.version:<17} {manifest.created_at:<28} {row['items']:>7} {row['boxes']:>7}  "
              f"{manifest.author:<16} {manifest.message}")
    return 0


def cmd_diff(stack, args: argparse.Namespace) -> int:
    (a_set, a_ref), (b_set, b_ref) = dataset_ref(args.a), dataset_ref(args.b)
    if "@" not in args.a or "@" not in args.b:
        raise BadInput("diff takes DATASET@V1 DATASET@V2 (a version id, a branch or a tag after each @)")
    store = _store(stack, args)
    result = diff(store.version(a_set, a_ref), store.version(b_set, b_ref))
    if args.json:
        print(json.dumps(result.to_json()))
        return 0
    print(result.summary())
    for item_id in result.added:
        print(f"+ {item_id}")
    for item_id in result.removed:
        print(f"- {item_id}")
    for item_id in result.relabelled:
        before, after = result.relabel_details[item_id]
        print(f"~ {item_id}: {_labels_text(before)} -> {_labels_text(after)}")
    for item_id, old, new in result.moved:
        print(f"> {item_id}: split {old} -> {new}")
    for item_id, fields in sorted(result.changed.items()):
        print(f"! {item_id}: {', '.join(fields)} changed")
    return 0


def _labels_text(labels: dict) -> str:
    if not labels["labels"]:
        return labels["verdict"].replace("_", " ")
    return " ".join(f"{l['label']}[{','.join(f'{v:g}' for v in l['box'])}]" for l in labels["labels"])


# --- changing and exporting ----------------------------------------------------------------------------------------
def cmd_tag(stack, args: argparse.Namespace) -> int:
    dataset, _ = dataset_ref(args.dataset)
    store = _store(stack, args)
    version = store.tag(dataset, args.tag, args.ref, by=_actor(args))
    manifest = store.read_manifest(dataset, version)
    print(f"{dataset}@{version} tagged {args.tag}")
    announce(stack, args, [dataset_event(manifest, "tag", _actor(args), f"tagged {args.tag} ({args.ref})",
                                         tag=args.tag, manifest_ref=store.manifest_ref(manifest))])
    return 0


def _schema_classes(stack, manifest: Manifest) -> tuple[str, ...] | None:
    """The classes of the version's label schema, when the annotation bucket has it (the categories' order)."""
    if not manifest.schema_version:
        return None
    from cli.annotations import BUCKET as ANNOTATION_BUCKET
    from services.annotation.schemas import SchemaStore
    try:
        return tuple(SchemaStore(_s3(stack), ANNOTATION_BUCKET).get(manifest.schema_version).classes)
    except (KeyError, S3Error, ValueError):
        return None


def cmd_export(stack, args: argparse.Namespace) -> int:
    dataset, ref = dataset_ref(args.dataset)
    store = _store(stack, args)
    manifest = store.version(dataset, ref)
    _say(f"vigil: exporting {dataset}@{manifest.version} ({manifest.statistics['items']} items) as {args.format} "
         f"to {args.out}")
    exporter = export_coco if args.format == "coco" else export_yolo
    report = exporter(store, manifest, args.out, _schema_classes(stack, manifest), progress=_progress("exported"))
    _say(f"vigil: exported {report.items} items, {report.boxes} boxes ({report.images_written} images written, "
         f"{report.bytes_written} bytes) in {report.seconds:.1f} s")
    print(str(Path(args.out).resolve()))
    announce(stack, args, [dataset_event(
        manifest, "export", _actor(args), f"exported as {args.format} to {Path(args.out).resolve()}",
        manifest_ref=store.manifest_ref(manifest))])
    return 0


def _blurrer(stack, args: argparse.Namespace):
    """The face blurrer on inference's gRPC, checked to answer now (BadInput naming the address otherwise)."""
    import numpy as np
    import cv2

    from libs.common.faces import FaceBlurrer, FacesUnavailable

    address = args.inference or f"127.0.0.1:{stack.config.ports.grpc}"
    blurrer = FaceBlurrer(address, token=args.inference_token)
    probe = cv2.imencode(".jpg", np.zeros((32, 32, 3), np.uint8))[1].tobytes()
    try:
        blurrer.faces(probe)
    except (FacesUnavailable, KeyError) as exc:
        blurrer.close()
        raise BadInput(f"faces cannot be blurred: the face model of inference at {address} does not answer "
                       f"({exc}); nothing was stored. Start the stack (make up), give --inference HOST:PORT, or "
                       "--no-blur-faces for images known to show no one") from None
    return blurrer


def _read_import(args: argparse.Namespace, stack, store: DatasetStore, blurrer) -> ImportResult:
    try:
        document = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {args.file}: {exc}") from None
    kind = args.format or ("label-studio" if isinstance(document, list) else "coco")
    if args.images is not None and not Path(args.images).is_dir():
        raise BadInput(f"--images {args.images} is not a folder")
    if kind == "coco":
        if args.images is None:
            raise BadInput("a COCO import needs --images DIR, the folder the file names its images in")
        return import_coco(store, document, args.images, blurrer=blurrer, camera_id=args.camera or "",
                           progress=_progress("stored"))

    def read_s3(bucket: str, key: str) -> bytes:
        response = store.client.get_object(bucket, key)
        try:
            return response.read()
        finally:
            response.close()
            response.release_conn()

    return import_label_studio(store, document, args.images, blurrer=blurrer, read_s3=read_s3,
                               progress=_progress("stored"))


def cmd_import(stack, args: argparse.Namespace) -> int:
    dataset, _ = dataset_ref(args.dataset)
    check_name(args.branch, "branch")
    store = _store(stack, args, create=True)
    blurrer = None if args.no_blur_faces else _blurrer(stack, args)
    try:
        result = _read_import(args, stack, store, blurrer)
    finally:
        if blurrer is not None:
            blurrer.close()
    for reason in result.left_out:
        _say(f"vigil: left out {reason}")
    head, _ = store.head(dataset, args.branch)
    message = args.message or f"import of {Path(args.file).name}"
    if args.replace:
        manifest = store.commit(dataset, result.items, message, _actor(args), branch=args.branch,
                                expected_parent=head)
    else:
        manifest = store.append(dataset, result.items, message, _actor(args), branch=args.branch)
    committed = manifest.version != head
    blurred = "faces not blurred (--no-blur-faces)" if blurrer is None else f"{result.faces_blurred} faces blurred"
    _say(f"vigil: {len(result.items)} images ({result.boxes} boxes; {blurred}"
         + (f"; {result.crowd_regions_left_out} crowd regions left out" if result.crowd_regions_left_out else "")
         + (f"; {result.boxes_clipped} boxes clipped to their image" if result.boxes_clipped else "")
         + f") -> {dataset}@{manifest.version} on {args.branch}"
         + ("" if committed else ": nothing new, the branch already holds them"))
    print(manifest.version)
    actor, ref = _actor(args), store.manifest_ref(manifest)
    events = [dataset_event(manifest, "commit", actor, branch=args.branch, manifest_ref=ref)] if committed else []
    events.append(dataset_event(manifest, "import", actor,
                                f"imported {len(result.items)} images from {Path(args.file).resolve()} ({blurred})",
                                branch=args.branch, manifest_ref=ref))
    announce(stack, args, events)
    return 0


def cmd_gc(stack, args: argparse.Namespace) -> int:
    store = _store(stack, args)
    report = collect_garbage(store, timedelta(hours=args.grace), dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    said = (f"{verb} {len(report.deleted_blobs)} blobs ({report.deleted_bytes} bytes) and "
            f"{len(report.deleted_manifests)} unreachable manifests; kept {report.referenced_blobs} referenced "
            f"blobs of {report.live_versions} live versions, {len(report.young_unreferenced_blobs)} unreferenced "
            f"blobs and {len(report.young_unreachable_manifests)} manifests younger than {args.grace:g} h")
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(said)
    if not args.dry_run:
        announce(stack, args, [gc_event(_actor(args), said, {
            "deleted_blobs": len(report.deleted_blobs), "deleted_bytes": report.deleted_bytes,
            "deleted_manifests": len(report.deleted_manifests), "live_versions": report.live_versions,
            "referenced_blobs": report.referenced_blobs})])
    return 0


# --- registration --------------------------------------------------------------------------------------------------
COMMANDS = {"list": cmd_list, "show": cmd_show, "log": cmd_log, "diff": cmd_diff, "tag": cmd_tag,
            "export": cmd_export, "import": cmd_import, "gc": cmd_gc}


def register(subparsers: argparse._SubParsersAction) -> dict:
    datasets = subparsers.add_parser("datasets", help="versioned datasets: list, show, log, diff, tag, export, "
                                     "import, gc", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = datasets.add_subparsers(dest="datasets_command", required=True)

    def common(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--bucket", default=BUCKET, help=f"the dataset store's bucket (default {BUCKET})")
        parser.add_argument("--bootstrap", help="Kafka bootstrap servers for the audit events (default: the "
                                                "local stack's)")
        parser.add_argument("--as", dest="as_", metavar="WHO", help="who does it, for the record (default: the "
                                                                    "OS user)")
        return parser

    common(sub.add_parser("list", help="datasets, branches, tags")).add_argument("--json", action="store_true")
    show = common(sub.add_parser("show", help="a version's statistics"))
    show.add_argument("dataset", metavar="DATASET[@REF]")
    show.add_argument("--json", action="store_true")
    log = common(sub.add_parser("log", help="versions, newest first"))
    log.add_argument("dataset", metavar="DATASET")
    log.add_argument("--ref", default="main", help="branch, tag or version to start from (default main)")
    log.add_argument("--limit", type=int, default=0, help="at most this many (default: all)")
    log.add_argument("--json", action="store_true", help="one JSON object per version")
    diff_parser = common(sub.add_parser("diff", help="items added, removed, relabelled between two versions"))
    diff_parser.add_argument("a", metavar="DATASET@V1")
    diff_parser.add_argument("b", metavar="DATASET@V2")
    diff_parser.add_argument("--json", action="store_true")
    tag = common(sub.add_parser("tag", help="name a version for good"))
    tag.add_argument("dataset", metavar="DATASET")
    tag.add_argument("tag", metavar="TAG")
    tag.add_argument("ref", metavar="REF", help="a branch, a tag or a version id")
    export = common(sub.add_parser("export", help="a version as COCO or YOLO files"))
    export.add_argument("dataset", metavar="DATASET[@VERSION]")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--out", required=True, type=Path, metavar="DIR")
    imp = common(sub.add_parser("import", help="labelled images (COCO, Label Studio) as a new version"))
    imp.add_argument("dataset", metavar="DATASET")
    imp.add_argument("file", metavar="COCO_JSON", help="a COCO detection file (or Label Studio's JSON export)")
    imp.add_argument("--images", type=Path, metavar="DIR", help="the folder of the images the file names")
    imp.add_argument("--message", help="the version's message (default: import of FILE)")
    imp.add_argument("--format", choices=IMPORT_FORMATS, help="default: label-studio for a JSON list, else coco")
    imp.add_argument("--branch", default="main")
    imp.add_argument("--replace", action="store_true", help="the version holds exactly these items (default: "
                                                            "merged by item id into the branch's head)")
    imp.add_argument("--camera", help="the camera of images whose entry names none")
    imp.add_argument("--no-blur-faces", action="store_true", help="store the images as they are: only for images "
                                                                  "known to show no one")
    imp.add_argument("--inference", metavar="HOST:PORT", help="inference's gRPC address for the face model "
                                                              "(default: the local stack's)")
    imp.add_argument("--inference-token", help="bearer token of inference's gRPC endpoint, when it has one")
    gc = common(sub.add_parser("gc", help="delete what no version needs, after a grace period"))
    gc.add_argument("--grace", type=float, default=24.0, metavar="H", help="hours an unreferenced blob or "
                                                                           "manifest is kept (default 24)")
    gc.add_argument("--dry-run", action="store_true", help="say what would be deleted, delete nothing")
    gc.add_argument("--json", action="store_true")

    def cmd_datasets(stack, args: argparse.Namespace) -> int:
        configure_logging("cli", "WARNING")  # library logs only when something is wrong, on stderr
        # urllib3 warns at each retry of an unreachable object store: the one error below says it once.
        logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
        try:
            return COMMANDS[args.datasets_command](stack, args)
        except (BadInput, InvalidName, UnknownRef, TagExists, ImportRefused, CommitRefused) as exc:
            _say(f"vigil: {exc}")
            return 2
        except RefConflict as exc:
            _say(f"vigil: the branch moved meanwhile ({exc}); nothing was committed, try again")
            return 1
        except AuditNotDelivered as exc:
            _say(f"vigil: {exc}")
            return 1
        except (S3Error, ObjectIntegrityError, CorruptManifest) as exc:
            _say(f"vigil: the dataset store failed: {exc}")
            return 1
        except ConnectionFailed as exc:
            _say(f"vigil: the object store does not answer at 127.0.0.1:{stack.config.ports.s3} "
                 f"({getattr(exc, 'reason', None) or exc}); is the stack up? (make up)")
            return 1
        except OSError as exc:
            _say(f"vigil: {exc}")
            return 1

    return {"datasets": cmd_datasets}
