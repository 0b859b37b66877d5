"""`vigil train DATASET@VERSION`: train a candidate on a dataset version, by hand, against the local stack's S3.

  vigil train DATASET[@VERSION] [--model yolov3-tiny] [--seed N] [--margin M] [--tolerance T] [--json]

The champion is the registry's primary of --model (the served default dir while the registry has none); the
candidate (a re-scoring stage on its proposals, services/training) is fitted on the version's train split,
calibrated on val, both are evaluated on test, and the candidate is imported as the next version of --model with
its lineage and the gate's report, marked eligible or refused. Nothing is promoted. The dataset is read with the
store's read-only keys where the stack has them. Progress on stderr; the answer on stdout.
Exit: 0 eligible, 3 refused by the gate, 2 bad input, 1 the stores failed."""
from __future__ import annotations

import argparse
import getpass
import json
import logging
import sys

from minio import Minio
from minio.error import S3Error
from urllib3.exceptions import HTTPError as ConnectionFailed

from cli.datasets import BUCKET as DATASETS_BUCKET, BadInput, dataset_ref
from cli.annotations import stack_s3_client
from libs.common.logs import configure_logging
from libs.model_registry.manifest import RegistryError
from libs.model_registry.store import BUCKET as MODELS_BUCKET, ModelRegistry
from services.datasets.manifest import InvalidName
from services.datasets.store import DatasetStore, UnknownRef
from services.training.job import NoChampion, run_training
from services.training.trainer import TrainingParams

DEFAULT_MODEL = "yolov3-tiny"
_DENIED = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _progress(step: str, done: int, total: int, eta_s: float | None) -> None:
    _say(f"vigil: {step} {done}/{total}" + (f", ETA {eta_s:.0f} s" if eta_s else ""))


def _dataset_store(stack, bucket: str) -> DatasetStore:
    """The dataset store read with its read-only keys; the writer's when this stack's S3 does not know them yet
    (a stack started before they existed)."""
    endpoint = f"127.0.0.1:{stack.config.ports.s3}"
    reader = Minio(endpoint, access_key=stack.config.datasets_read_access_key,
                   secret_key=stack.config.datasets_read_secret_key, secure=False)
    try:
        if not reader.bucket_exists(bucket):
            raise BadInput(f"no dataset store: the bucket {bucket} does not exist")
        return DatasetStore(reader, bucket)
    except S3Error as exc:
        if exc.code not in _DENIED:
            raise
    _say("vigil: the object store refuses the datasets' read-only keys (restart the stack to give them); "
         "reading with the writer's")
    writer = Minio(endpoint, access_key=stack.config.s3_access_key, secret_key=stack.config.s3_secret_key,
                   secure=False)
    if not writer.bucket_exists(bucket):
        raise BadInput(f"no dataset store: the bucket {bucket} does not exist")
    return DatasetStore(writer, bucket)


def _default_champion(stack, model: str):
    """The served default detector's dir, standing for the champion until the registry has a primary."""
    if model != DEFAULT_MODEL:
        return None
    from tools.darknet_converter import ensure_default_model
    return ensure_default_model(stack.paths.cache)


def cmd_train(stack, args: argparse.Namespace) -> int:
    configure_logging("cli", "WARNING")  # the progress lines below say what the job's log says
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)
    try:
        dataset, version = dataset_ref(args.dataset)
        if args.margin < 0 or not 0 <= args.tolerance <= 1:
            raise BadInput("--margin must be >= 0 and --tolerance within 0..1")
        store = _dataset_store(stack, args.datasets_bucket)
        registry = ModelRegistry(stack_s3_client(stack), args.bucket)
        params = TrainingParams(margin=args.margin, tolerance=args.tolerance)
        result = run_training(store, registry, dataset, version, args.model, args.seed, params,
                              by=f"cli/{getpass.getuser()}", progress=_progress,
                              work_dir=stack.paths.state / "training",
                              cache_dir=stack.paths.cache / "training" / "proposals",
                              default_champion=_default_champion(stack, args.model))
    except (BadInput, InvalidName, UnknownRef, NoChampion) as exc:
        _say(f"vigil: {exc}")
        return 2
    except ValueError as exc:  # a version without train or test items, an image that does not decode
        _say(f"vigil: cannot train on {args.dataset}: {exc}")
        return 2
    except (RegistryError, S3Error) as exc:
        _say(f"vigil: the object store failed: {exc}")
        return 1
    except ConnectionFailed as exc:
        _say(f"vigil: the object store does not answer at 127.0.0.1:{stack.config.ports.s3} "
             f"({getattr(exc, 'reason', None) or exc}); is the stack up? (make up)")
        return 1
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        verdict = "eligible" if result.eligible else "refused by the gate"
        print(f"{result.name} version {result.version}: {verdict}; trained on {result.dataset}@"
              f"{result.dataset_version} (seed {args.seed})")
        print(f"  test mAP@0.5: champion {result.champion.ref} {result.champion_map50:.4f}, "
              f"candidate {result.candidate_map50:.4f}")
        for reason in result.reasons:
            print(f"  {reason}")
    return 0 if result.eligible else 3


def register(subparsers: argparse._SubParsersAction) -> dict:
    train = subparsers.add_parser("train", help="train a candidate on a dataset version, gate it, register it",
                                  description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("dataset", metavar="DATASET[@VERSION]", help="a version id, branch or tag (default main)")
    train.add_argument("--model", default=DEFAULT_MODEL, help=f"the base model in the registry; its primary is the "
                                                              f"champion (default {DEFAULT_MODEL})")
    train.add_argument("--seed", type=int, default=0)
    defaults = TrainingParams()
    train.add_argument("--margin", type=float, default=defaults.margin,
                       help=f"mAP@0.5 the candidate must beat the champion's by (default {defaults.margin})")
    train.add_argument("--tolerance", type=float, default=defaults.tolerance,
                       help=f"how far any class's AP or recall may fall (default {defaults.tolerance})")
    train.add_argument("--json", action="store_true", help="the result as one JSON object")
    train.add_argument("--bucket", default=MODELS_BUCKET, help=f"the registry's bucket (default {MODELS_BUCKET})")
    train.add_argument("--datasets-bucket", default=DATASETS_BUCKET,
                       help=f"the dataset store's bucket (default {DATASETS_BUCKET})")
    return {"train": cmd_train}
