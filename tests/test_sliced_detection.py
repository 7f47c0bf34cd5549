"""Sliced detection: tiles cover the image, cut objects are found once, memory is per tile.

The detector under the slicing is an oracle that finds bright squares by connected
components (OpenCV), so every expected box is known exactly.
"""

from __future__ import annotations

import cv2
import keras
import numpy as np
import pytest

from keras_dense.detection import detect_sliced, slice_windows
from keras_dense.detection.sliced import class_nms


def oracle(rgb: np.ndarray, min_area: int = 9, inclusive: bool = False) -> dict:
    """Every bright blob of at least `min_area` pixels, as a yxyx box (exclusive ends, or
    inclusive ones as detectors clip them), labelled by its colour channel (red 1, green 2),
    scored by its area."""
    boxes, labels, scores = [], [], []
    for label, channel in ((1, 0), (2, 1)):
        mask = (rgb[..., channel] > 128).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        for x, y, w, h, area in stats[1:count]:
            if area >= min_area:
                end = 1 if inclusive else 0
                boxes.append([y, x, y + h - end, x + w - end])
                labels.append(label)
                scores.append(min(1.0, area / 1000.0))
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "labels": np.asarray(labels, np.int64),
    }


def _draw(height, width, squares):
    image = np.zeros((height, width, 3), np.uint8)
    for y, x, side, label in squares:
        image[y : y + side, x : x + side, label - 1] = 255
    return image


def _sorted(boxes):
    boxes = np.asarray(boxes).reshape(-1, 4)
    return boxes[np.lexsort(boxes.T[::-1])]


def test_windows_cover_the_image_with_the_overlap():
    windows = slice_windows(1000, 700, 256, 0.25)
    covered = np.zeros((1000, 700), bool)
    for y0, x0, y1, x1 in windows:
        assert (y1 - y0, x1 - x0) == (256, 256)  # edge tiles are flush, not smaller
        covered[y0:y1, x0:x1] = True
    assert covered.all()
    ys = np.unique(windows[:, 0])
    assert np.all(np.diff(ys) <= 192) and ys[-1] == 1000 - 256
    assert slice_windows(100, 80, 256, 0.2).tolist() == [[0, 0, 100, 80]]


def test_an_image_of_one_tile_gives_the_plain_detections():
    image = _draw(200, 180, [(10, 20, 30, 1), (100, 50, 12, 2), (150, 150, 25, 1)])
    sliced = detect_sliced(oracle, image, tile=256, overlap=0.2)
    plain = class_nms(oracle(image), 0.5)
    for key in ("boxes", "scores", "labels"):
        np.testing.assert_array_equal(sliced[key], plain[key])


@pytest.mark.parametrize("full_image", [True, False])
@pytest.mark.parametrize("inclusive", [False, True])
def test_an_object_across_a_tile_border_is_found_once_and_whole(full_image, inclusive):
    # Tiles of 128 with overlap 0.25: starts 0, 96, 192, ... The square spans 120..150 in
    # x: cut by the first tile's right edge (128), whole in the second (96..224).
    image = _draw(128, 400, [(40, 120, 30, 1)])

    def detector(rgb):
        return oracle(rgb, inclusive=inclusive)

    found = detect_sliced(detector, image, tile=128, overlap=0.25, full_image=full_image)
    end = 1 if inclusive else 0
    np.testing.assert_array_equal(found["boxes"], [[40, 120, 70 - end, 150 - end]])
    assert found["labels"].tolist() == [1]


def test_objects_whole_in_two_tiles_and_of_two_classes_are_merged_per_class():
    # Both squares lie inside the overlap of the first two tiles; touching squares of
    # different classes must not suppress each other.
    image = _draw(128, 300, [(20, 100, 20, 1), (60, 100, 20, 2), (60, 120, 20, 1)])
    found = detect_sliced(oracle, image, tile=128, overlap=0.3, full_image=False)
    np.testing.assert_array_equal(
        _sorted(found["boxes"]),
        _sorted([[20, 100, 40, 120], [60, 100, 80, 120], [60, 120, 80, 140]]),
    )


def test_a_huge_image_recalls_its_small_objects_tile_by_tile():
    """4000 x 4000 px, 20 squares of 12 px: every one found exactly once, and the detector
    never sees more than one tile (memory bounded by the tile, not the image)."""
    rng = np.random.default_rng(0)
    squares = []
    while len(squares) < 20:
        y, x = rng.integers(0, 4000 - 12, 2)
        if all(abs(y - a) > 30 or abs(x - b) > 30 for a, b, _, _ in squares):
            squares.append((int(y), int(x), 12, 1 + len(squares) % 2))
    image = _draw(4000, 4000, squares)
    seen = []

    def recording(rgb):
        seen.append(rgb.shape)
        return oracle(rgb)

    found = detect_sliced(recording, image, tile=512, overlap=0.2)
    expected = [[y, x, y + 12, x + 12] for y, x, _, _ in squares]
    np.testing.assert_array_equal(_sorted(found["boxes"]), _sorted(expected))
    assert max(max(shape[:2]) for shape in seen) == 512
    # The shrunk whole image (4000 -> 512) makes 12 px squares 1.5 px: below the
    # detector's minimum, so the whole-image pass adds nothing here.
    assert len(seen) == len(slice_windows(4000, 4000, 512, 0.2)) + 1


def test_a_model_through_the_card_runs_sliced():
    """`detect_objects_sliced` on a real (untrained) Faster R-CNN: tiles at the card's size,
    boxes inside the image, scores sorted."""
    from keras_dense.prediction.inference import detect_objects_sliced
    from tests.export_test_utils import tiny_faster_rcnn

    model = tiny_faster_rcnn()
    card = {"min_size": 96, "max_size": 160, "normalization": "caffe"}
    image = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    found = detect_objects_sliced(model, image, card, tile=128, overlap=0.25, score_threshold=0.0)
    boxes = found["boxes"]
    assert len(boxes) and np.all(boxes >= -1e-3) and np.all(boxes[:, 2] <= 200 + 1e-3)
    assert np.all(boxes[:, 3] <= 300 + 1e-3) and np.all(np.diff(found["scores"]) <= 0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tile": 8}, "--slice 8"),
        ({"overlap": 1.0}, "--overlap 1.0"),
        ({"nms_iou": 2.0}, "nms_iou=2.0"),
    ],
)
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        detect_sliced(oracle, np.zeros((64, 64, 3), np.uint8), **kwargs)


def test_predict_slice_through_the_cli(tmp_path, capsys):
    import json

    from keras_dense import cli
    from keras_dense.utils.model_card import write_model_card
    from tests.export_test_utils import tiny_faster_rcnn

    path = str(tmp_path / "det.keras")
    tiny_faster_rcnn().save(path)
    card = {"task": "detection", "classes": ["a", "b"], "min_size": 64, "max_size": 128}
    write_model_card(path, {**card, "normalization": "caffe"})
    rgb = np.random.default_rng(0).integers(0, 255, (150, 220, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "big.png"), rgb[..., ::-1])
    out = tmp_path / "out"
    args = ["predict", "--model", path, str(tmp_path / "big.png"), "--output", str(out)]
    assert cli.main([*args, "--slice", "96", "--overlap", "0.25", "--score-threshold", "0"]) == 0
    detections = json.loads((out / "big_detections.json").read_text())
    assert detections and all(
        0 <= d["box_yxyx"][0] <= d["box_yxyx"][2] <= 150 + 1e-3 for d in detections
    )
    assert cli.main([*args, "--overlap", "0.3"]) == 2
    assert "--overlap applies to sliced detection: give --slice too" in capsys.readouterr().err
    assert cli.main([*args, "--merge", "greedy"]) == 2
    assert "--merge applies to sliced detection: give --slice too" in capsys.readouterr().err
    # --max-memory: tiles per model call with --slice, refused without it.
    budget = ["--score-threshold", "0", "--max-memory", "8GiB"]
    out_batched = tmp_path / "batched"
    batched = ["predict", "--model", path, str(tmp_path / "big.png"), "--output", str(out_batched)]
    assert cli.main([*batched, "--slice", "96", "--overlap", "0.25", *budget]) == 0
    again = json.loads((out_batched / "big_detections.json").read_text())
    assert [(d["label"], d["class"]) for d in again] == [
        (d["label"], d["class"]) for d in detections
    ]
    for key in ("box_yxyx", "score"):  # batched convolutions round differently
        np.testing.assert_allclose([d[key] for d in again], [d[key] for d in detections], atol=1e-3)
    assert cli.main([*args, "--max-memory", "8GiB"]) == 2  # refused before any image
    assert "--max-memory applies to detection with --slice" in capsys.readouterr().err
    assert cli.main([*args, "--merge-iou", "0.15"]) == 2
    assert "--merge-iou applies to sliced detection: give --slice too" in capsys.readouterr().err
    assert cli.main([*args, "--slice", "96", "--merge-iou", "1.5"]) == 2
    assert "--merge-iou 1.5: expected a number in [0, 1]" in capsys.readouterr().err


def test_evaluate_slice_of_one_tile_equals_whole_images(tmp_path, capsys):
    """A tile as large as the images gives the whole-image detections, hence the same AP;
    smaller tiles run and are reported."""
    import json

    import keras

    from keras_dense import cli
    from keras_dense.apps import faster_rcnn
    from keras_dense.utils.model_card import write_model_card
    from tests.test_reliability_detection import CLASSES, TINY_FASTER, H, W, example, write_shard

    keras.utils.set_random_seed(0)
    path = str(tmp_path / "frcnn.keras")
    faster_rcnn(num_classes=len(CLASSES), **TINY_FASTER).save(path)
    card = {"task": "detection", "normalization": "caffe", "classes": CLASSES}
    write_model_card(path, {**card, "min_size": H, "max_size": W, "background_outputs": 1})
    boxes = [(0.1, 0.1, 0.6, 0.5), (0.3, 0.5, 0.9, 0.95)]
    records = [example(source_id=f"r{k}", boxes=boxes, labels=(1 + k % 3, 2)) for k in range(4)]
    data = write_shard(tmp_path / "val", records)
    reports = {}
    for name, extra in {
        "whole": [],
        "one_tile": ["--slice", "64"],
        "one_tile_greedy": ["--slice", "64", "--merge", "greedy"],
        "tiles": ["--slice", "32"],
    }.items():
        out = tmp_path / name
        args = ["evaluate", "--model", path, "--data", data, "--output", str(out), *extra]
        assert cli.main(args) == 0
        reports[name] = json.loads((out / "metrics.json").read_text())
    assert any(ap > 0 for ap in reports["whole"]["ap"].values())  # a comparison that can fail
    assert reports["one_tile"]["ap"] == reports["whole"]["ap"]
    assert reports["one_tile"]["slice"] == {
        "tile": 64,
        "overlap": 0.2,
        "merge": "nms",
        "merge_iou": 0.5,
    }
    # The model's own NMS leaves no pair for greedy matching to join within one tile.
    assert reports["one_tile_greedy"]["ap"] == reports["whole"]["ap"]
    assert reports["one_tile_greedy"]["slice"]["merge"] == "greedy"
    assert (
        reports["tiles"]["slice"]["tile"] == 32 and "sliced: 32 px tiles" in capsys.readouterr().out
    )


def test_the_whole_image_pass_scales_each_axis_back_by_its_own_factor():
    """A 150 x 3000 image shrunk to 26 x 512: the axes' factors differ by 1.5 %, 30 px at
    x = 2000. Only the shrunk image's detections are kept here (tiles are 150 px high)."""
    image = _draw(150, 3000, [(40, 2000, 60, 1)])

    def whole_only(rgb):
        return oracle(rgb) if rgb.shape[0] < 100 else oracle(np.zeros_like(rgb))

    found = detect_sliced(whole_only, image, tile=512, overlap=0.2, full_image=True)
    assert len(found["boxes"]) == 1
    # Blob edges round to the shrunk image's pixels: within 1 / 0.17 ~ 6 px.
    np.testing.assert_allclose(found["boxes"][0], [40, 2000, 100, 2060], atol=7)


def _greedy_reference(detections: dict, iou: float) -> list[tuple]:
    """Greedy matching written out pair by pair: IoU above the threshold, best score first."""

    def overlap(a, b):
        h = min(a[2], b[2]) - max(a[0], b[0])
        w = min(a[3], b[3]) - max(a[1], b[1])
        inter = max(h, 0) * max(w, 0)
        area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
        return inter / (area(a) + area(b) - inter)

    items = sorted(
        zip(detections["boxes"].tolist(), detections["scores"].tolist(), detections["labels"]),
        key=lambda item: -item[1],
    )
    taken, merged = [False] * len(items), []
    for i, (box, score, label) in enumerate(items):
        if taken[i]:
            continue
        group = [box]
        for j, (other, _, other_label) in enumerate(items):
            if j != i and not taken[j] and other_label == label and overlap(box, other) > iou:
                taken[j] = True
                group.append(other)
        taken[i] = True
        enclosing = [min(b[0] for b in group), min(b[1] for b in group)]
        enclosing += [max(b[2] for b in group), max(b[3] for b in group)]
        merged.append((tuple(round(v, 3) for v in enclosing), round(score, 5), int(label)))
    return sorted(merged, key=lambda item: -item[1])


def test_greedy_merge_equals_the_pairwise_reference():
    from keras_dense.detection import greedy_merge

    rng = np.random.default_rng(4)
    corners = rng.uniform(0, 60, (60, 2))
    sizes = rng.uniform(5, 30, (60, 2))
    detections = {
        "boxes": np.concatenate([corners, corners + sizes], 1).astype(np.float32),
        "scores": rng.permutation(60).astype(np.float32) / 60 + 0.01,
        "labels": rng.integers(1, 4, 60).astype(np.int64),
    }
    merged = greedy_merge(detections, 0.3)
    got = [
        (tuple(round(float(v), 3) for v in box), round(float(score), 5), int(label))
        for box, score, label in zip(merged["boxes"], merged["scores"], merged["labels"])
    ]
    expected = _greedy_reference(detections, 0.3)
    assert len(expected) < 60  # some groups formed: the comparison can fail
    assert got == expected


def test_greedy_merge_joins_the_pieces_of_an_object_no_tile_holds_whole():
    # Tiles of 128, overlap 0.25 (starts 0, 96, 192, 272); the bar spans x 60..250: pieces
    # [60, 128), [96, 224) and [192, 250), no tile holds it whole, adjacent pieces overlap
    # with IoU ~0.2. NMS keeps the biggest piece; greedy matching returns the whole bar.
    image = _draw(128, 400, [])
    image[40:70, 60:250, 0] = 255

    def by_width(rgb):  # the widest piece scores best (the oracle's scores saturate at 1)
        found = oracle(rgb)
        return {**found, "scores": (found["boxes"][:, 3] - found["boxes"][:, 1]) / 1000}

    options = dict(tile=128, overlap=0.25, full_image=False, nms_iou=0.15)
    nms = detect_sliced(by_width, image, **options)
    greedy = detect_sliced(by_width, image, merge="greedy", **options)
    np.testing.assert_array_equal(nms["boxes"], [[40, 96, 70, 224]])
    np.testing.assert_array_equal(greedy["boxes"], [[40, 60, 70, 250]])
    # At NMS's usual 0.5 the pieces (IoU ~0.2 with the middle one) stay apart: both merges
    # give the three pieces.
    for merge in ("nms", "greedy"):
        apart = detect_sliced(by_width, image, **{**options, "nms_iou": 0.5}, merge=merge)
        assert len(apart["boxes"]) == 3, merge
    with pytest.raises(ValueError, match="--merge 'best'"):
        detect_sliced(oracle, image, tile=128, merge="best")


def _faster_and_card():
    from tests.export_test_utils import tiny_faster_rcnn

    card = {"task": "detection", "classes": ["a", "b"], "min_size": 64, "max_size": 128}
    return tiny_faster_rcnn(), {**card, "normalization": "caffe"}


def _fast_and_card():
    from tests.test_evaluate_predict import _tiny_fast_rcnn

    card = {"task": "detection", "classes": ["a", "b", "c"], "min_size": 64, "max_size": 128}
    return _tiny_fast_rcnn(), {**card, "normalization": "caffe"}


@pytest.mark.parametrize("make", [_faster_and_card, _fast_and_card], ids=["faster", "fast"])
def test_tiles_batched_under_max_memory_give_the_one_by_one_detections(make, monkeypatch):
    import keras_dense.detection as detection
    from keras_dense.prediction.inference import detect_objects_sliced
    from tests.export_test_utils import make_image

    keras.utils.set_random_seed(0)
    model, card = make()
    if any(layer.name == "cls_score" for layer in model.layers):
        # Caffe-scale pixels saturate the untrained classifier: scores round to exactly 1 and
        # NMS keeps either of two tied boxes. Smaller logits keep the scores apart.
        classifier = model.get_layer("cls_score")
        classifier.kernel.assign(classifier.kernel * 1e-3)
    rgb = make_image(150, 220, seed=1)
    calls = []
    original = detection.detect

    def counted(model, images, *args, **kwargs):
        calls.append(len(images))
        return original(model, images, *args, **kwargs)

    monkeypatch.setattr(detection, "detect", counted)
    options = dict(tile=96, overlap=0.25, score_threshold=0.0)
    one = detect_objects_sliced(model, rgb, card, **options)
    one_calls = list(calls)
    calls.clear()
    batched = detect_objects_sliced(model, rgb, card, max_memory=2**34, **options)
    assert set(one_calls) == {1} and max(calls) > 1  # both paths ran as described
    assert sum(calls) == sum(one_calls) and len(calls) < len(one_calls)
    assert len(one["boxes"]) > 0
    # Untrained weights at score threshold 0 give some 200 near-equal scores: a rounding that
    # depends on the batch (oneDNN picks its kernels by batch size) may flip an NMS tie, so a
    # few detections may differ (3 of 217 here). The others must be the same box, label, score.
    a = np.c_[one["boxes"], one["labels"], one["scores"]]
    b = np.c_[batched["boxes"], batched["labels"], batched["scores"]]
    same = (np.abs(a[:, None, :4] - b[None, :, :4]).max(-1) <= 1e-3) & (
        a[:, None, 4] == b[None, :, 4]
    )
    same &= np.abs(a[:, None, 5] - b[None, :, 5]) <= 1e-5
    assert min(same.any(1).sum(), same.any(0).sum()) >= 0.95 * max(len(a), len(b))


def test_tile_bytes_of_a_fast_rcnn_counted_by_hand():
    from keras_dense.prediction.detection_memory import tile_bytes, tiles_per_call

    model, _ = _fast_and_card()
    # Features: one 4-channel conv at stride 16, 64 x 96 -> 4 x 6 cells of 4 float32.
    features = 4 * 6 * 4 * 4
    # Per RoI: 2 x 2 x 4 pooled cells into cls_score (16 -> 4) and bbox_pred (16 -> 16).
    per_roi = 4 * ((16 + 4) + (16 + 16))
    expected = 2 * (features + 2000 * per_roi)  # selective search's 2000, safety factor 2
    assert tile_bytes(model, 64, 96) == expected
    assert tiles_per_call(model, 64, 96, 3 * expected + 1) == 3
    with pytest.raises(ValueError, match=f"--max-memory 1000 bytes: .* about {expected} bytes"):
        tiles_per_call(model, 64, 96, 1000)


def mask_oracle(rgb: np.ndarray) -> dict:
    """The oracle's blobs with their pixel masks (`segment_instances`' format)."""
    boxes, labels, scores, masks = [], [], [], []
    for label, channel in ((1, 0), (2, 1)):
        mask = (rgb[..., channel] > 128).astype(np.uint8)
        count, ids, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=4)
        for index in range(1, count):
            x, y, w, h, area = stats[index]
            if area >= 9:
                boxes.append([y, x, y + h - 1, x + w - 1])  # inclusive ends, as detectors
                labels.append(label)
                scores.append(w / 1000.0)  # the widest piece first
                masks.append(ids == index)
    return {
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "scores": np.asarray(scores, np.float32),
        "labels": np.asarray(labels, np.int64),
        "masks": np.asarray(masks, bool).reshape(-1, *rgb.shape[:2]),
    }


@pytest.mark.parametrize("full_image", [True, False])
def test_masks_come_back_in_image_pixels_once_and_whole(full_image):
    # A disc across the first tiles' border (whole in the second tile) and a bar no tile
    # holds whole: its pieces join, masks united, with greedy matching at a low IoU.
    image = np.zeros((128, 400, 3), np.uint8)
    rows, cols = np.mgrid[:128, :400]
    disc = (rows - 60) ** 2 + (cols - 125) ** 2 <= 14**2
    image[disc, 0] = 255
    image[100:110, 200:390, 1] = 255
    found = detect_sliced(
        mask_oracle,
        image,
        tile=128,
        overlap=0.25,
        full_image=full_image,
        nms_iou=0.1,
        merge="greedy",
    )
    assert found["masks"].shape == (len(found["boxes"]), 128, 400)
    by_label = {int(label): mask for label, mask in zip(found["labels"], found["masks"])}
    assert sorted(found["labels"].tolist()) == [1, 2]
    bar = np.zeros((128, 400), bool)
    bar[100:110, 200:390] = True
    for truth, mask in ((disc, by_label[1]), (bar, by_label[2])):
        # With the whole-image pass too, a group keeps its tiles' full-resolution masks.
        np.testing.assert_array_equal(mask, truth)


def test_mask_rcnn_on_one_tile_gives_its_whole_image_instances():
    from keras_dense.prediction.instances import segment_instances, segment_instances_sliced
    from tests.test_mask_rcnn import small_model

    model = small_model(seed=1)
    card = {"min_size": 64, "max_size": 96, "normalization": "caffe"}
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (64, 90, 3), dtype=np.uint8)
    whole = segment_instances(model, image, card, score_threshold=0.0)
    sliced = segment_instances_sliced(model, image, card, tile=128, score_threshold=0.0)
    assert len(whole["boxes"]) > 0
    order_whole = np.argsort(-whole["scores"], kind="stable")
    kept = class_nms({k: v for k, v in whole.items() if k != "masks"}, 0.5)
    assert len(sliced["boxes"]) == len(kept["boxes"])
    # Each kept detection's mask is the whole-image mask of the same box.
    for box, mask in zip(sliced["boxes"], sliced["masks"]):
        match = [i for i in order_whole if np.allclose(whole["boxes"][i], box)]
        assert match, box
        np.testing.assert_array_equal(mask, whole["masks"][match[0]])


def test_nms_keeps_the_whole_mask_of_an_object_cut_by_a_tile():
    image = np.zeros((128, 400, 3), np.uint8)
    rows, cols = np.mgrid[:128, :400]
    disc = (rows - 60) ** 2 + (cols - 125) ** 2 <= 14**2
    image[disc, 0] = 255
    found = detect_sliced(mask_oracle, image, tile=128, overlap=0.25, full_image=False)
    assert found["labels"].tolist() == [1]
    np.testing.assert_array_equal(found["masks"][0], disc)


def test_evaluate_and_predict_slice_a_mask_rcnn(tmp_path, capsys):
    import json

    from keras_dense import cli
    from keras_dense.data import convert_shapes
    from keras_dense.utils.model_card import write_model_card
    from tests.test_mask_rcnn import small_model

    convert_shapes(str(tmp_path / "val"), 3, size=48, seed=6, progress=False)
    manifest = json.loads((tmp_path / "val.json").read_text())
    path = str(tmp_path / "mask_rcnn.keras")
    small_model(seed=1).save(path)
    card = {"task": "instance_segmentation", "classes": manifest["classes"][1:]}
    write_model_card(path, {**card, "normalization": "caffe", "min_size": 64, "max_size": 96})
    data = str(tmp_path / "val-*.tfrecord")
    reports = {}
    for name, extra in {"whole": [], "one_tile": ["--slice", "64"]}.items():
        out = tmp_path / name
        assert (
            cli.main(["evaluate", "--model", path, "--data", data, "--output", str(out), *extra])
            == 0
        )
        reports[name] = json.loads((out / "metrics.json").read_text())
    for key in ("box_ap", "mask_ap", "voc_map"):
        assert reports["one_tile"][key] == pytest.approx(reports["whole"][key]), key
    assert reports["one_tile"]["slice"]["tile"] == 64
    rgb = np.random.default_rng(0).integers(0, 255, (60, 150, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "wide.png"), rgb[..., ::-1])
    out = tmp_path / "predicted"
    args = ["predict", "--model", path, str(tmp_path / "wide.png"), "--output", str(out)]
    assert cli.main([*args, "--slice", "48", "--score-threshold", "0"]) == 0
    ids = cv2.imread(str(out / "wide_instance_ids.png"), cv2.IMREAD_UNCHANGED)
    assert ids.shape == (60, 150)
    assert cli.main([*args, "--slice", "48", "--max-memory", "1GiB"]) == 2
    assert "--max-memory does not apply to instance_segmentation" in capsys.readouterr().err
