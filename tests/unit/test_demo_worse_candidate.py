"""The demo's worse candidate: train and val answers move to other frames of the same camera and image size (so
every answer still fits its frame and passes the store's validation), the test split's stay."""
from __future__ import annotations

from services.datasets.manifest import Item, Label
from cli.demo.worse import shuffled_labels


def item(i: int, split: str, camera: str = "lobby", size=(768, 576), boxes: int = 1) -> Item:
    labels = tuple(Label("person", (10.0 * i, 10, 10.0 * i + 5, 20)) for _ in range(boxes))
    return Item(f"item-{i}", f"{i:064x}", 1, size[0], size[1], camera_id=camera, labels=labels, split=split,
                verdict="labelled" if boxes else "nothing_to_label")


def test_answers_move_within_a_camera_and_image_size_and_the_test_split_keeps_its_own():
    items = [item(i, "train") for i in range(10)] + [item(10 + i, "val", boxes=0) for i in range(3)] + \
        [item(20 + i, "train", camera="dock", size=(64, 48)) for i in range(4)] + [item(30, "test")]
    shuffled = {s.item_id: s for s in shuffled_labels(items, seed=1)}
    assert shuffled["item-30"] == items[-1]
    moved = [i for i in items if shuffled[i.item_id].labels != i.labels]
    assert len(moved) > 5  # most answers moved
    for original in items:
        new = shuffled[original.item_id]
        donors = [i for i in items if (i.camera_id, i.width, i.height) == (original.camera_id, original.width,
                                                                           original.height) and i.split != "test"]
        assert (new.labels, new.verdict) in [(d.labels, d.verdict) for d in donors] or original.split == "test"
        assert (new.verdict == "nothing_to_label") == (not new.labels)  # verdict and boxes moved together
