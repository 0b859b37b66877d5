"""Committers in processes of their own, for the dataset store's integration tests.

- `race_rounds` (a multiprocessing target): in each round, every racer appends one item from the same head and
  waits, manifest written, until the others have too; then all move the branch at once. Each reports per round
  whether its first attempt won or met a conflict, and a loser retries (append reads the new head) until it lands.
- `python -m tests.integration.datasets_committer pause DATASET ITEM_ID` (store in VIGIL_TEST_S3_*): appends one
  item, and between writing the manifest and moving the branch prints "manifest-written <id>" and sleeps, to be
  killed there."""
from __future__ import annotations

import os
import sys
import time

from minio import Minio

from libs.common.objectstore import RefConflict
from services.datasets.store import DatasetStore
from tests.dataset_items import T0, item, jpeg


def client_settings(client: Minio, bucket: str) -> dict:
    """What another process needs to open the same store."""
    credentials = client._provider.retrieve()  # noqa: SLF001 (tests only)
    return {"endpoint": client._base_url.host, "access_key": credentials.access_key,  # noqa: SLF001
            "secret_key": credentials.secret_key, "bucket": bucket}


def new_store(settings: dict, **options) -> DatasetStore:
    return DatasetStore(Minio(settings["endpoint"], access_key=settings["access_key"],
                              secret_key=settings["secret_key"], secure=False), settings["bucket"], **options)


def racer_item(store: DatasetStore, name: str, round_number: int, seed: int):
    blob = jpeg(seed)
    return item(f"{name}-{round_number}", ("person", 1, 1, 40, 80), blob=store.put_blob(blob), size=len(blob),
                width=160, height=120, captured_at=T0 + round_number)


def race_rounds(settings: dict, dataset: str, name: str, seed: int, rounds: int, round_start, manifests_written,
                round_end, results) -> None:
    store = new_store(settings)
    try:
        for r in range(rounds):
            new = racer_item(store, name, r, seed * 1000 + r)
            round_start.wait(60)
            store.on_manifest_written = lambda _manifest: manifests_written.wait(60)
            try:
                store.append(dataset, [new], f"{name} round {r}", name, retries=0)
                outcome = "won"
            except RefConflict:
                outcome = "conflict"
            store.on_manifest_written = None
            if outcome == "conflict":
                landed = store.append(dataset, [new], f"{name} round {r} (retried)", name, retries=20)
                assert landed.item(new.item_id) == new
            results.put((name, r, outcome))
            round_end.wait(60)
    except BaseException as exc:  # noqa: BLE001 (reported to the test, which fails on it)
        results.put((name, -1, f"error: {exc!r}"))
        for barrier in (round_start, manifests_written, round_end):
            barrier.abort()
        raise


def pause_between_manifest_and_ref(dataset: str, item_id: str) -> None:
    settings = {key: os.environ[f"VIGIL_TEST_S3_{key.upper()}"]
                for key in ("endpoint", "access_key", "secret_key", "bucket")}

    def pause(manifest) -> None:
        print(f"manifest-written {manifest.version}", flush=True)
        time.sleep(300)

    store = new_store(settings, on_manifest_written=pause)
    blob = jpeg(99)
    store.append(dataset, [item(item_id, ("car", 1, 1, 30, 30), blob=store.put_blob(blob), size=len(blob),
                                width=160, height=120)], "never lands", "doomed")


if __name__ == "__main__":
    if sys.argv[1] == "pause":
        pause_between_manifest_and_ref(sys.argv[2], sys.argv[3])
