"""`python -m bench.datasets`: the dataset store's speed beside the raw speed of the S3 server it runs on, measured in
one run against one SeaweedFS (started here on free ports, alone, and stopped at the end).

1. raw S3     small objects (4 KiB) PUT then GET one after another by one client, objects/s: what every store
              operation is built from.
2. blobs      10,000 images stored through DatasetStore.put_blob (HEAD, then PUT if absent), 8 threads: the
              service stores each accepted label's image as it arrives, so this is setup, reported for scale.
3. commit     a commit of 10,000 items whose blobs are stored (as the service would have them): the validation
              gate (one listing of the blob prefix instead of 10,000 HEADs), the manifest built and written, the
              branch moved by compare-and-swap. Then appending 100 items to that 10,000-item head, the service's
              steady state (the head's blobs are known stored, only the new ones are checked).
4. diff       two 10,000-item versions (the second: 500 relabelled, 200 moved split, 100 removed, 100 added) read
              by a store with nothing cached, then diffed; the diff alone, and read + diff.
5. export     the COCO export of the 10,000-item version: `export_figure` below is the hook (helper I's
              services/datasets/formats.py); null until it exists.

Results go to bench/results/datasets.json with the date and the machine."""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from bench.common import machine_description, say
from libs.common.objectstore import ensure_bucket
from services.annotation.schemas import LabelSchema
from services.datasets.diff import diff
from services.datasets.manifest import Item, Label, Manifest
from services.datasets.store import DatasetStore

CLASSES = ("person", "car", "bicycle", "dog", "truck")
CAMERAS = 16
WIDTH, HEIGHT = 768, 576
BUCKET = "vigil-datasets"


def raw_s3_rates(client, objects: int, size: int = 4096) -> dict:
    """PUT then GET of `objects` objects of `size` bytes, one at a time, by one client."""
    bucket = f"raw-{uuid.uuid4().hex[:8]}"
    ensure_bucket(client, bucket)
    payload = os.urandom(size)
    started = time.perf_counter()
    for n in range(objects):
        client.put_object(bucket, f"o/{n:06d}", io.BytesIO(payload), size)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    for n in range(objects):
        response = client.get_object(bucket, f"o/{n:06d}")
        try:
            response.read()
        finally:
            response.close()
            response.release_conn()
    get_s = time.perf_counter() - started
    return {"objects": objects, "object_bytes": size, "put_per_s": round(objects / put_s),
            "get_per_s": round(objects / get_s)}


def blob_payloads(count: int, rng: np.random.Generator) -> list[bytes]:
    """Distinct 2-6 KiB payloads standing in for images (the store neither decodes nor resizes them)."""
    return [rng.bytes(int(rng.integers(2048, 6144))) for _ in range(count)]


def make_items(blobs: list[tuple[str, int]], rng: np.random.Generator, start: int = 0) -> list[Item]:
    """Items over 16 cameras, a frame every 7 s per camera, 0-4 boxes of 5 classes; splits left to the store."""
    items = []
    for n, (sha, size) in enumerate(blobs, start=start):
        boxes = []
        for _ in range(int(rng.integers(0, 5))):
            x, y = float(rng.uniform(0, WIDTH - 80)), float(rng.uniform(0, HEIGHT - 120))
            boxes.append(Label(CLASSES[int(rng.integers(0, len(CLASSES)))],
                               (round(x, 1), round(y, 1), round(x + float(rng.uniform(10, 80)), 1),
                                round(y + float(rng.uniform(20, 120)), 1))))
        items.append(Item(item_id=f"task-{n:06d}", blob=sha, size=size, width=WIDTH, height=HEIGHT,
                          camera_id=f"cam-{n % CAMERAS:02d}", captured_at=1_764_403_200.0 + 7.0 * (n // CAMERAS),
                          source_task_ids=(f"task-{n:06d}",), labels=tuple(boxes),
                          verdict="labelled" if boxes else "nothing_to_label", schema_version="1"))
    return items


def store_blobs(store: DatasetStore, payloads: list[bytes], threads: int = 8) -> tuple[list[tuple[str, int]], float]:
    started = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        shas = list(pool.map(store.put_blob, payloads))
    return list(zip(shas, (len(p) for p in payloads))), time.perf_counter() - started


def changed_version(items: list[Item], added: list[Item], rng: np.random.Generator) -> tuple[list[Item], dict]:
    """The items with 500 relabelled, 200 moved to another split, 100 removed and `added` added."""
    chosen = rng.permutation(len(items))
    relabel, move, remove = set(chosen[:500].tolist()), set(chosen[500:700].tolist()), set(chosen[700:800].tolist())
    out = []
    for n, item in enumerate(items):
        if n in remove:
            continue
        if n in relabel:
            box = (1.0, 2.0, 50.0, 90.0 + n % 7)
            item = replace(item, labels=(Label(CLASSES[n % len(CLASSES)], box),), verdict="labelled")
        if n in move:
            item = replace(item, split={"train": "val", "val": "test", "test": "train"}[item.split])
        out.append(item)
    return out + added, {"relabelled": 500, "moved": 200, "removed": 100, "added": len(added)}


def timed(function, *args, repeats: int = 1, **kwargs):
    """The result of the last call and the median seconds of `repeats` calls."""
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return result, statistics.median(times)


def export_figure(store: DatasetStore, manifest: Manifest, out_dir: Path) -> dict | None:
    """The COCO export of `manifest` (10,000 items) into `out_dir` (services/datasets/formats.export_coco: every
    image read from the store verified, 8 at a time, and written, then annotations.json), timed; then the same
    export again into the same folder (images already there are not read again: only the annotation file)."""
    from services.datasets.formats import ANNOTATIONS_FILE, export_coco

    started = time.perf_counter()
    report = export_coco(store, manifest, out_dir)
    seconds = time.perf_counter() - started
    started = time.perf_counter()
    again = export_coco(store, manifest, out_dir)
    again_s = time.perf_counter() - started
    return {"items": report.items, "boxes": report.boxes, "images_written": report.images_written,
            "image_bytes": report.bytes_written, "annotations_bytes": (out_dir / ANNOTATIONS_FILE).stat().st_size,
            "seconds": round(seconds, 3), "items_per_s": round(report.items / seconds),
            "again_into_the_same_folder": {"images_written": again.images_written, "seconds": round(again_s, 3),
                                           "items_per_s": round(again.items / again_s)}}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--raw-objects", type=int, default=2000, help="small objects for the raw S3 rate")
    parser.add_argument("--repeats", type=int, default=3, help="runs of the diff (the median is reported)")
    parser.add_argument("--out", type=Path, default=Path("bench/results/datasets.json"))
    args = parser.parse_args()

    from tests.integration.infrastructure import object_store

    load_before = os.getloadavg()[0]
    rng = np.random.default_rng(12)
    state = Path(tempfile.mkdtemp(prefix="vigil-bench-datasets-"))
    schema = LabelSchema(version="1", classes=CLASSES)
    with object_store(state) as client:
        ensure_bucket(client, BUCKET)
        say(f"[1/5] raw S3: {args.raw_objects} PUTs then GETs of 4 KiB, one client ...")
        raw = raw_s3_rates(client, args.raw_objects)
        say(f"      PUT {raw['put_per_s']}/s, GET {raw['get_per_s']}/s")

        say(f"[2/5] storing {args.items:,} + 200 blobs (put_blob, 8 threads) ...")
        store = DatasetStore(client, BUCKET, schema=schema)
        blobs, blob_s = store_blobs(store, blob_payloads(args.items + 200, rng))
        say(f"      {len(blobs) / blob_s:,.0f} blobs/s")

        say(f"[3/5] commit of {args.items:,} items, then append of 100 to it ...")
        items = make_items(blobs[:args.items], rng)
        committer = DatasetStore(client, BUCKET, schema=schema)  # nothing cached, as a fresh process
        v1, commit_s = timed(committer.commit, "bench", items, "10k items", "bench")
        appended = make_items(blobs[args.items:args.items + 100], rng, start=args.items)
        _, append_s = timed(committer.append, "bench", appended, "100 more", "bench")
        say(f"      commit {commit_s:.2f} s ({args.items / commit_s:,.0f} items/s), manifest "
            f"{len(v1.to_bytes()) / 2**20:.1f} MiB; append of 100 to it {append_s:.2f} s")

        say("[4/5] diff of two 10,000-item versions ...")
        v2_items, changes = changed_version(list(v1.items), make_items(blobs[args.items + 100:args.items + 200], rng,
                                                                       start=args.items + 100), rng)
        v2 = committer.commit("bench-diff", v1.items, "a", "bench")
        v2 = committer.commit("bench-diff", v2_items, "b", "bench")
        a_id = v2.parent
        read_and_diff_s = []
        for _ in range(args.repeats):
            reader = DatasetStore(client, BUCKET)
            started = time.perf_counter()
            result = diff(reader.version("bench-diff", a_id), reader.version("bench-diff", v2.version))
            read_and_diff_s.append(time.perf_counter() - started)
        a, b = reader.version("bench-diff", a_id), reader.version("bench-diff", v2.version)
        result, diff_s = timed(diff, a, b, repeats=args.repeats)
        found = {"relabelled": len(result.relabelled), "moved": len(result.moved), "removed": len(result.removed),
                 "added": len(result.added)}
        exact = found == changes and not result.changed
        say(f"      diff {diff_s * 1000:.0f} ms; read both + diff {statistics.median(read_and_diff_s):.2f} s; "
            f"exact: {exact} ({result.summary()})")

        say("[5/5] COCO export of the 10,000-item version (services/datasets/formats.py) ...")
        export = export_figure(store, v1, state / "export")
        say(f"      {export}")

    per_op_ms = 1000 / raw["put_per_s"]
    result_json = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine_description(),
        "load_average_1m": {"before": round(load_before, 1), "after": round(os.getloadavg()[0], 1)},
        "s3_server": "SeaweedFS (weed mini), local, this run",
        "raw_s3_small_objects": raw,
        "blobs_stored": {"blobs": len(blobs), "seconds": round(blob_s, 2), "per_s": round(len(blobs) / blob_s),
                         "threads": 8},
        "commit": {"items": args.items, "seconds": round(commit_s, 3), "items_per_s": round(args.items / commit_s),
                   "manifest_bytes": len(v1.to_bytes()),
                   "in_raw_puts": round(commit_s * 1000 / per_op_ms, 1)},
        "append_100_to_10000": {"seconds": round(append_s, 3), "in_raw_puts": round(append_s * 1000 / per_op_ms, 1)},
        "diff": {"items": [len(a.items), len(b.items)], "changes": changes, "exact": exact,
                 "diff_seconds": round(diff_s, 4), "diff_items_per_s": round(len(b.items) / diff_s),
                 "read_both_and_diff_seconds": round(statistics.median(read_and_diff_s), 3),
                 "read_both_and_diff_items_per_s": round(len(b.items) / statistics.median(read_and_diff_s))},
        "export_coco": export,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result_json, indent=2) + "\n")
    print(json.dumps(result_json, indent=2))
    return 0 if exact else 1


if __name__ == "__main__":
    sys.exit(main())
