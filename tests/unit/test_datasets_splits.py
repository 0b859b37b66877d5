"""Stable splits: the split is a pure function of the group key (the same in every process and run, whatever the
hash seed), neighbouring frames of one camera share a group, the ratios hold over many groups; and the leakage
check pairs near-duplicate images across splits only."""
from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter

import pytest

from services.datasets.manifest import build_manifest
from services.datasets.splits import (assign_split, cross_split_pairs, group_key, image_hash_bits, item_split,
                                      leakage)
from tests.dataset_items import T0, item, jpeg

KEYS = [group_key(f"cam-{c}", T0 + 600 * b) for c in range(5) for b in range(8)]


def test_neighbouring_frames_of_one_camera_share_a_group_and_so_a_split():
    frames = [T0 + 0.2 * n for n in range(3000)]  # ten minutes at 5 fps, from a bucket's start
    assert {group_key("cam-1", t) for t in frames} == {group_key("cam-1", T0)}
    assert group_key("cam-1", T0 + 600) != group_key("cam-1", T0) != group_key("cam-2", T0)
    assert len({item_split(item(f"f{n}", captured_at=t)) for n, t in enumerate(frames)}) == 1


def test_the_split_of_a_key_is_the_same_in_another_process_with_another_hash_seed():
    here = [assign_split(k) for k in KEYS]
    code = ("import sys; from services.datasets.splits import assign_split; "
            "print(','.join(assign_split(k) for k in sys.argv[1:]))")
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", code, *KEYS], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": seed}).stdout.strip()
        assert out.split(",") == here


def test_known_keys_keep_their_split_across_releases():
    # Pinned: a change of the hash or its reading would move every item of every dataset to another split.
    assert [assign_split(f"cam-{n}@2940672") for n in range(12)] == [
        "train", "train", "train", "test", "train", "train", "train", "train", "val", "train", "val", "train"]


def test_the_ratios_hold_over_many_groups():
    counts = Counter(assign_split(f"cam-{n % 40}@{n}") for n in range(20_000))
    assert abs(counts["train"] / 20_000 - 0.8) < 0.015
    assert abs(counts["val"] / 20_000 - 0.1) < 0.01 and abs(counts["test"] / 20_000 - 0.1) < 0.01
    only_train = Counter(assign_split(f"k{n}", (1, 0, 0)) for n in range(500))
    assert only_train == {"train": 500}
    assert Counter(assign_split(f"k{n}", (0, 0, 1)) for n in range(500)) == {"test": 500}
    with pytest.raises(ValueError):
        assign_split("k", (0.5, 0.5))


def test_cross_split_pairs_are_near_hashes_in_different_splits_only():
    hashes = {"a": 0b1111, "b": 0b1110, "c": 0b1111, "d": 0xFFFF_0000_0000_0000, "e": 0b0111}
    splits = {"a": "train", "b": "val", "c": "train", "d": "test", "e": "test"}
    assert cross_split_pairs(hashes, splits, distance=1) == [("a", "b"), ("a", "e"), ("b", "c"), ("c", "e")]
    assert cross_split_pairs(hashes, splits, distance=0) == []


class Blobs(dict):
    def get_blob(self, sha256: str) -> bytes:
        return self[sha256]


def test_leakage_finds_a_brightened_copy_in_another_split():
    images = Blobs({"x" * 64: jpeg(1), "y" * 64: jpeg(1, brightness=12), "z" * 64: jpeg(2), "w" * 64: jpeg(3)})
    assert bin(image_hash_bits(jpeg(1)) ^ image_hash_bits(jpeg(1, brightness=12))).count("1") <= 6
    assert bin(image_hash_bits(jpeg(1)) ^ image_hash_bits(jpeg(2))).count("1") > 12
    manifest = build_manifest("d", [item("i1", blob="x" * 64, split="train"), item("i2", blob="y" * 64, split="val"),
                                    item("i3", blob="z" * 64, split="test"), item("i4", blob="w" * 64, split="val")])
    assert leakage(manifest, images) == [("i1", "i2")]
