"""RPN proposal layer speed on this machine. Prints JSON.

`ProposalLayer` (batched, in graph: decode, clip, min-size filter, top-N, one batched NMS,
top-N) on the head outputs of a VGG16 conv5_3 map of a 600 x 800 image: 38 x 50 cells x 9
anchors = 17100 anchors, random logits and small random deltas. Measured per image at batch
1 and 2, in test mode (6000 / 300) and training mode (12000 / 2000), against a
straightforward per-image Python/NumPy implementation (py-faster-rcnn's steps: NumPy decode,
clip, filter, argsort, then greedy NMS one kept box at a time with NumPy IoUs against the
rest, a Python loop over the images). Both run in the same process, interleaved run by run
(medians of `--runs`); the JSON gives the ratio, every run, the versions, the machine and
the load average before and after, and how far both give the same proposals.

    .venv/bin/python benchmarks/rpn.py [--runs 7] [--batches 1 2]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402
from roi_pooling import comparison, paired_times  # noqa: E402

HEIGHT, WIDTH, STRIDE = 38, 50, 16
IMAGE = (600, 800)
MODES = {"test": (6000, 300), "train": (12000, 2000)}


def numpy_anchors(height: int, width: int, stride: int = STRIDE):
    """The 9 default anchors of every cell (same convention as generate_anchors)."""
    import numpy as np

    sizes = np.array(
        [(s * np.sqrt(r), s / np.sqrt(r)) for r in (0.5, 1, 2) for s in (128, 256, 512)]
    )
    rows = (np.arange(height) + 0.5) * stride
    cols = (np.arange(width) + 0.5) * stride
    cy, cx = np.meshgrid(rows, cols, indexing="ij")
    centres = np.stack([cy, cx], -1).reshape(-1, 1, 2)
    low = centres - sizes / 2
    high = centres + sizes / 2 - 1
    return np.concatenate([low, high], -1).reshape(-1, 4)


def numpy_nms(boxes, scores, threshold: float, limit: int):
    """Greedy NMS, inclusive-pixel IoU, as py-faster-rcnn's `py_cpu_nms`."""
    import numpy as np

    y0, x0, y1, x1 = boxes.T
    areas = (y1 - y0 + 1) * (x1 - x0 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        h = np.maximum(0.0, np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]) + 1)
        w = np.maximum(0.0, np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]) + 1)
        inter = h * w
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[iou <= threshold]
    return np.array(keep, np.int64)


def numpy_proposals(objectness, deltas, anchors, image_shape, pre: int, post: int):
    """The per-image baseline: one image at a time, NumPy, py-faster-rcnn's order of steps."""
    import numpy as np

    out = []
    for b in range(objectness.shape[0]):
        scores = 1.0 / (1.0 + np.exp(-objectness[b].reshape(-1)))
        d = deltas[b].reshape(-1, 4)
        ha = anchors[:, 2] - anchors[:, 0] + 1
        wa = anchors[:, 3] - anchors[:, 1] + 1
        cy = anchors[:, 0] + 0.5 * ha + d[:, 1] * ha
        cx = anchors[:, 1] + 0.5 * wa + d[:, 0] * wa
        h = ha * np.exp(d[:, 3])
        w = wa * np.exp(d[:, 2])
        boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2 - 1, cx + w / 2 - 1], -1)
        height, width = image_shape[b]
        boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, height - 1)
        boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, width - 1)
        big = (boxes[:, 2] - boxes[:, 0] + 1 >= 16) & (boxes[:, 3] - boxes[:, 1] + 1 >= 16)
        boxes, scores = boxes[big], scores[big]
        order = np.argsort(-scores, kind="stable")[:pre]
        boxes, scores = boxes[order], scores[order]
        keep = numpy_nms(boxes, scores, 0.7, post)
        out.append((boxes[keep], scores[keep]))
    return out


def agreement(ours, baseline) -> dict:
    """How far the two agree: counts, rows in the same place, and the boxes as sets.

    TF's float32 sigmoid and NumPy's can differ by one ulp, which swaps boxes whose scores
    are that close; such swaps show as rows out of place while the sets still agree.
    """
    import numpy as np

    boxes, _, counts = (t.numpy() for t in ours)
    result = {"same_counts": True, "rows_out_of_place": 0, "max_box_difference_px_as_sets": 0.0}
    for b, (want, _) in enumerate(baseline):
        got = boxes[b, : counts[b]]
        if len(got) != len(want):
            result["same_counts"] = False
            continue
        if not len(want):
            continue
        result["rows_out_of_place"] += int((np.abs(got - want).max(1) > 1e-2).sum())
        got_sorted = got[np.lexsort(np.round(got, 2).T[::-1])]
        want_sorted = want[np.lexsort(np.round(want, 2).T[::-1])]
        difference = float(np.abs(got_sorted - want_sorted).max())
        result["max_box_difference_px_as_sets"] = max(
            result["max_box_difference_px_as_sets"], difference
        )
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from keras_dense.layers import ProposalLayer

    rng = np.random.default_rng(0)
    anchors = numpy_anchors(HEIGHT, WIDTH)
    layer = ProposalLayer()
    spec = [
        tf.TensorSpec([None, None, None, 9]),
        tf.TensorSpec([None, None, None, 36]),
        tf.TensorSpec([None, 2], tf.int32),
    ]
    compiled = {
        mode: tf.function(
            lambda o, d, s, training=(mode == "train"): layer([o, d, s], training=training),
            input_signature=spec,
        )
        for mode in MODES
    }
    results = {
        "what": "ProposalLayer seconds per image at 38 x 50 x 9 = 17100 anchors (600 x 800)",
        "ours": "ProposalLayer (tf.function, batched, combined_non_max_suppression)",
        "baseline": "per-image NumPy decode/clip/filter/argsort + greedy NumPy NMS loop",
        "ratio": "baseline_ms / ours_ms (> 1: ours is faster); medians of interleaved runs, "
        "times per image",
        "environment": environment(),
        "runs": args.runs,
    }
    for batch in args.batches:
        objectness = rng.normal(0, 2, (batch, HEIGHT, WIDTH, 9)).astype(np.float32)
        deltas = rng.normal(0, 0.1, (batch, HEIGHT, WIDTH, 36)).astype(np.float32)
        shapes = np.tile(np.array([IMAGE], np.int32), (batch, 1))
        tensors = [tf.constant(x) for x in (objectness, deltas, shapes)]
        for mode, (pre, post) in MODES.items():
            fn = compiled[mode]
            load_before = os.getloadavg()
            times = paired_times(
                {
                    "ours": lambda fn=fn, tensors=tensors: [t.numpy() for t in fn(*tensors)],
                    "baseline": lambda pre=pre, post=post, inputs=(objectness, deltas, shapes): (
                        numpy_proposals(*inputs[:2], anchors, inputs[2], pre, post)
                    ),
                },
                args.runs,
            )
            per_image = {
                name: (median / batch, [t / batch for t in runs])
                for name, (median, runs) in times.items()
            }
            entry = comparison(per_image["ours"], per_image["baseline"])
            entry["pre_nms_top_n"], entry["post_nms_top_n"] = pre, post
            entry["agreement"] = agreement(
                fn(*tensors), numpy_proposals(objectness, deltas, anchors, shapes, pre, post)
            )
            entry["load_average_before"] = load_before
            entry["load_average_after"] = os.getloadavg()
            results[f"batch={batch} {mode}"] = entry
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
