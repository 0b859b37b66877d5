"""What the scripted annotator submits for the reference's boxes (the task's schema decides), which boxes a 422
names, and when a frame is dark enough to be brightened before the reference sees it."""
from __future__ import annotations

import numpy as np

from cli.demo.annotator import Credentials, answer_for, refused_boxes
from cli.demo.reference import DARK_GAIN, MAX_GAIN, TARGET_LUMA, Box, luma_gain

TASK = {"task_id": "t", "width": 768, "height": 576,
        "schema": {"classes": ["person", "car", "bicycle"], "min_box_px": 4.0}}


def test_the_answer_keeps_the_schema_classes_clipped_to_the_frame_and_drops_boxes_below_the_minimum():
    boxes = [Box("person", 10.0, 20.0, 50.0, 120.0, 0.9), Box("dog", 0, 0, 100, 100, 0.8),
             Box("car", 700.0, 500.0, 800.0, 600.0, 0.7), Box("bicycle", 5.0, 5.0, 7.0, 30.0, 0.6)]
    verdict, answer = answer_for(TASK, boxes)
    assert verdict == "labelled"
    assert answer == [{"label": "person", "x1": 10.0, "y1": 20.0, "x2": 50.0, "y2": 120.0},
                      {"label": "car", "x1": 700.0, "y1": 500.0, "x2": 768.0, "y2": 576.0}]


def test_nothing_the_schema_knows_is_nothing_to_label():
    assert answer_for(TASK, []) == ("nothing_to_label", [])
    assert answer_for(TASK, [Box("dog", 0, 0, 100, 100, 0.8)]) == ("nothing_to_label", [])


def test_the_boxes_a_refusal_names_are_found_by_number():
    assert refused_boxes(["box 1: 'dragon' is not a class", "box 3: 2x2 px is smaller than the minimum 4 px a side",
                          "verdict 'x' is not one of labelled"]) == {1, 3}


def test_a_dim_frame_gets_the_gain_that_restores_its_luma_and_a_lit_one_none():
    lit = np.full((8, 8, 3), 120, np.uint8)
    dim = np.full((8, 8, 3), 15, np.uint8)
    black = np.zeros((8, 8, 3), np.uint8)
    assert luma_gain(lit) == 1.0 and luma_gain(np.full((8, 8, 3), 200, np.uint8)) == 1.0
    assert abs(luma_gain(dim) - TARGET_LUMA / 15) < 0.01 and luma_gain(dim) > DARK_GAIN
    assert luma_gain(black) == MAX_GAIN


def test_credentials_never_show_their_token():
    assert "secret" not in repr(Credentials("ana", "secret-token"))
