"""Why Faster R-CNN trails Fast R-CNN on BCCD: loss curves and proposal recall while training.

Trains `apps/faster_rcnn_bccd.toml` from scratch at the Results table's CPU budget (the
settings of `benchmarks/faster_rcnn.py`: `backbone_weights="none"`, shorter side 240, longer
<= 400, 64 RoIs per image, anchors 16 ... 128) in one process, through the same pieces as
`keras-dense train` (recipe, builder, task datasets, optimizer, `model.fit`), and records:

- the four loss terms (RPN objectness, RPN box, head class, head box) of every optimizer
  step, reported as means over windows of `--log-every` steps;
- at each of `--check-steps`: the RPN's proposal recall on the validation images (fraction
  of ground-truth boxes that some proposal covers at IoU >= 0.5 and >= 0.7, among the top
  300 and top 1000 proposals after NMS, the model's test setting otherwise), the share of
  foreground RoIs the head is trained on, and (at `--map-steps`) the VOC mAP of
  `keras-dense evaluate` on the validation split;
- once, before training: how well the anchors fit the boxes (best inside-anchor IoU per
  ground-truth box, per class, and how many boxes have an anchor at IoU >= 0.7 / 0.5).

Writes the JSON to `--output` and a PNG of the four loss curves (OpenCV drawing; no
matplotlib) to `--plot`.

    nice -n 5 .venv/bin/python benchmarks/faster_rcnn_diagnosis.py --data /tmp/bccd \
        --steps 612 --check-steps 0,102,204,408,612 --map-steps 204,612 \
        --output /tmp/diagnosis.json --plot /tmp/losses.png [--set KEY=VALUE ...]

`--data` holds the shards of `keras-dense convert voc --root ../shared/datasets/bccd
--task detection --split train|val --classes RBC,WBC,Platelets --on-error skip --output
DATA/train|val`. `--set` adds recipe overrides (e.g. a candidate fix).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402

RECIPE = "apps/faster_rcnn_bccd.toml"
CLASSES = ("RBC", "WBC", "Platelets")
# benchmarks/faster_rcnn.py's budget (the README's Results row).
BUDGET = [
    'model.kwargs.backbone_weights="none"',
    "data.min_size=240",
    "data.max_size=400",
    "model.kwargs.rois_per_image=64",
    "model.kwargs.anchor_scales=[16, 32, 64, 128]",
]
TERMS = ("rpn_cls_loss", "rpn_box_loss", "cls_loss", "box_loss")


def build(data: str, steps: int, overrides: list[str]):
    """The recipe's model, datasets, optimizer and card, as `keras-dense train` makes them."""
    import keras

    from keras_dense.tasks import get_task
    from keras_dense.tasks.recipe_data import data_classes, total_steps
    from keras_dense.training.builders import build_model
    from keras_dense.training.optimizers import build_optimizer
    from keras_dense.training.recipe import load_config

    sets = [
        f'data.train="{data}/train-*.tfrecord"',
        f'data.validation="{data}/val-*.tfrecord"',
        *BUDGET,
        f"training.steps={steps}",
        *overrides,
    ]
    recipe = load_config(RECIPE, sets)
    task = get_task(recipe.task)
    keras.utils.set_random_seed(recipe.seed)
    classes = data_classes(recipe.data, task)
    run = recipe.with_num_classes(recipe.model.class_count(len(classes)))
    model, kwargs = build_model(
        run.model.builder, run.model.kwargs, run.model.num_classes, recipe.data.channels
    )
    model = task.finalize_model(model, False)
    train_ds, val_ds, per_epoch, _ = task.datasets(run, model, 1, 0)
    epochs, optimizer_steps = total_steps(run, per_epoch)
    optimizer = build_optimizer(run.optimizer, run.to_dict()["schedule"], optimizer_steps, False)
    task.compile(model, run, optimizer, run.model.num_classes)
    card = {
        "task": task.name,
        "normalization": recipe.data.normalization_mode,
        "classes": classes,
        "min_size": recipe.data.min_size,
        "max_size": recipe.data.max_size,
    }
    return model, train_ds, val_ds, per_epoch, card, sets, kwargs


def anchor_fit(model, val_batches) -> dict:
    """Best inside-anchor IoU of every validation box, per class (anchor sizes vs objects),
    and the positive anchors per box and in the RPN's 256-anchor sample."""
    import numpy as np
    import tensorflow as tf

    from keras_dense.detection.anchors import generate_anchors
    from keras_dense.detection.boxes import iou_matrix
    from keras_dense.detection.rpn_targets import inside_image, match_anchors

    layer = model.get_layer("proposal_layer")
    best, labels, sides, positives, sampled = [], [], [], [], []
    feature_sizes = {}  # the feature map's size per padded image size
    for batch in val_batches:
        size = tuple(batch["images"].shape[1:3])
        if size not in feature_sizes:
            features = model.get_layer("backbone")(batch["images"][:1], training=False)
            feature_sizes[size] = tuple(features.shape[1:3])
        height, width = feature_sizes[size]
        anchors = generate_anchors(height, width, layer.stride, layer.scales, layer.ratios)
        inside = inside_image(anchors, batch["image_shape"]).numpy()
        matched = match_anchors(
            anchors,
            batch["boxes"],
            batch["num_boxes"],
            batch["image_shape"],
            positive_iou=model.rpn_positive_iou,
            negative_iou=model.rpn_negative_iou,
        )["labels"].numpy()
        # What sample_anchors keeps: up to half positives, negatives fill the 256.
        quota = int(round(model.rpn_positive_fraction * model.rpn_batch_size_per_image))
        for row in matched:
            pos, neg = int((row == 1).sum()), int((row == 0).sum())
            positives.append(pos)
            kept_pos = min(pos, quota)
            sampled.append((kept_pos, min(model.rpn_batch_size_per_image, kept_pos + neg)))
        for i in range(int(batch["images"].shape[0])):
            n = int(batch["num_boxes"][i])
            boxes = tf.cast(batch["boxes"][i, :n], tf.float32)
            iou = iou_matrix(anchors, boxes).numpy()[inside[i]]
            best.append(iou.max(axis=0) if len(iou) else np.zeros(n))
            labels.append(batch["labels"][i, :n].numpy())
            sides.append(np.sqrt(np.prod((boxes[:, 2:] - boxes[:, :2]).numpy(), axis=1)))
    best, labels, sides = np.concatenate(best), np.concatenate(labels), np.concatenate(sides)
    result = {
        "rpn_positive_anchors_per_box": round(sum(positives) / max(len(labels), 1), 2),
        "rpn_sampled_positive_share": round(
            sum(p for p, _ in sampled) / max(sum(n for _, n in sampled), 1), 4
        ),
    }
    for k, name in enumerate(CLASSES, start=1):
        pick = labels == k
        if not pick.any():
            continue
        result[name] = {
            "boxes": int(pick.sum()),
            "median_side_px": round(float(np.median(sides[pick])), 1),
            "median_best_anchor_iou": round(float(np.median(best[pick])), 3),
            "share_anchor_iou_0.7": round(float((best[pick] >= 0.7).mean()), 3),
            "share_anchor_iou_0.5": round(float((best[pick] >= 0.5).mean()), 3),
        }
    return result


def proposal_recall(model, val_batches, tops=(300, 1000)) -> dict:
    """Recall of the RPN's proposals (test setting, NMS 0.7) on the validation batches."""
    import numpy as np
    import tensorflow as tf

    from keras_dense.detection.boxes import iou_matrix
    from keras_dense.layers.proposal_layer import ProposalLayer

    backbone, rpn = model.get_layer("backbone"), model.get_layer("rpn")
    # The model's proposal layer, keeping max(tops) proposals at test instead of 300.
    config = model.get_layer("proposal_layer").get_config()
    layer = ProposalLayer.from_config({**config, "test_post_nms_top_n": max(tops)})

    @tf.function(reduce_retracing=True)
    def run(images, shape, scale):
        objectness, deltas = rpn(backbone(images, training=False))
        return layer([objectness, deltas, shape, scale], training=False)

    best = {top: [] for top in tops}
    labels, counts = [], []
    for batch in val_batches:
        proposals, _, count = run(batch["images"], batch["image_shape"], batch["scale"])
        for i in range(int(batch["images"].shape[0])):
            n = int(batch["num_boxes"][i])
            truth = tf.cast(batch["boxes"][i, :n], tf.float32)
            found = proposals[i, : int(count[i])]
            counts.append(int(count[i]))
            labels.append(batch["labels"][i, :n].numpy())
            for top in tops:
                iou = iou_matrix(found[:top], truth).numpy()
                best[top].append(iou.max(axis=0) if len(iou) else np.zeros(n))
    labels = np.concatenate(labels)
    result = {"mean_proposals": round(float(np.mean(counts)), 1), "boxes": int(len(labels))}
    for top in tops:
        values = np.concatenate(best[top])
        for threshold in (0.5, 0.7):
            result[f"recall@{top}_iou{threshold}"] = round(float((values >= threshold).mean()), 4)
        for k, name in enumerate(CLASSES, start=1):
            pick = labels == k
            if pick.any():
                share = float((values[pick] >= 0.5).mean())
                result[f"recall@{top}_iou0.5_{name}"] = round(share, 4)
    return result


def foreground_share(model, batches) -> dict:
    """Foreground share of the head's sampled RoIs, and how many of them are proposals."""
    import numpy as np

    fg, rois, proposal_fg = [], [], []
    for batch in batches:
        terms = model.compute_losses(batch, training=False, seed=[1, 2])
        labels = terms["_targets"]["labels"].numpy()
        fg.append(int((labels > 0).sum()))
        rois.append(int((labels >= 0).sum()))
        # Foreground RoIs that are proposals rather than the ground-truth boxes themselves.
        boxes = terms["_targets"]["rois"].numpy()
        truth = batch["boxes"].numpy()
        for i in range(labels.shape[0]):
            n = int(batch["num_boxes"][i])
            same = (np.abs(boxes[i][:, None, :] - truth[i, :n][None]).max(-1) < 1e-3).any(-1)
            proposal_fg.append(int(((labels[i] > 0) & ~same).sum()))
        del terms
    return {
        "head_fg_share": round(sum(fg) / max(sum(rois), 1), 4),
        "head_fg_from_proposals_share": round(sum(proposal_fg) / max(sum(fg), 1), 4),
    }


def draw_losses(curves: dict, path: str) -> None:
    """The four loss curves as a 2 x 2 PNG grid (OpenCV lines and text)."""
    import cv2
    import numpy as np

    cell_h, cell_w, margin = 300, 480, 50
    canvas = np.full((2 * cell_h, 2 * cell_w, 3), 255, np.uint8)
    colours = [(200, 60, 30), (30, 120, 220), (40, 160, 40), (150, 40, 150)]
    for n, name in enumerate(TERMS):
        oy, ox = (n // 2) * cell_h, (n % 2) * cell_w
        x0, y0, x1, y1 = ox + margin, oy + 30, ox + cell_w - 15, oy + cell_h - margin
        cv2.rectangle(canvas, (x0, y0), (x1, y1), (0, 0, 0), 1)
        cv2.putText(canvas, name, (x0, oy + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1)
        for label, series in curves.items():
            steps = np.asarray(series["step"], np.float64)
            values = np.asarray(series[name], np.float64)
            if len(steps) < 2:
                continue
            top = max(max(np.max(s[name]) for s in curves.values()), 1e-6)
            last = max(np.max(s["step"]) for s in curves.values())
            xs = x0 + (x1 - x0) * steps / last
            ys = y1 - (y1 - y0) * values / top
            points = np.stack([xs, ys], 1).round().astype(np.int32)
            colour = colours[list(curves).index(label) % len(colours)]
            cv2.polylines(canvas, [points], False, colour, 2, cv2.LINE_AA)
            cv2.putText(
                canvas, f"{top:.3g}", (ox + 2, y0 + 10), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0)
            )
            cv2.putText(
                canvas, f"{int(last)}", (x1 - 30, y1 + 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, 0
            )
        for m, label in enumerate(curves):
            colour = colours[m % len(colours)]
            cv2.putText(
                canvas, label, (x1 - 160, y0 + 18 + 16 * m), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour
            )
    ok, encoded = cv2.imencode(".png", canvas)
    if not ok:
        raise RuntimeError(f"{path}: OpenCV could not encode the plot")
    with open(path, "wb") as handle:
        handle.write(encoded.tobytes())


def diagnose(args) -> dict:
    import keras
    import numpy as np

    from keras_dense.evaluation.evaluator import evaluate_detection

    model, train_ds, val_ds, per_epoch, card, sets, kwargs = build(args.data, args.steps, args.set)
    val_batches = list(val_ds.take(args.recall_batches))
    fg_batches = list(train_ds.take(3))
    record = {"steps": [], **{name: [] for name in TERMS}}
    checks, maps = [], []
    started = time.monotonic()
    check_steps = sorted(set(args.check_steps))
    map_steps = set(args.map_steps)

    def check(step: int) -> None:
        entry = {"step": step, "seconds": round(time.monotonic() - started, 1)}
        entry.update(proposal_recall(model, val_batches))
        entry.update(foreground_share(model, fg_batches))
        if step in map_steps:
            report = evaluate_detection(model, card, f"{args.data}/val-*.tfrecord")
            entry["map"] = round(report["map"], 4)
            entry["ap"] = {k: round(v, 4) for k, v in report["ap"].items()}
            maps.append({"step": step, "map": entry["map"], "ap": entry["ap"]})
        checks.append(entry)
        print(json.dumps(entry), flush=True)
        if args.partial:
            write_json(args.partial, {"checks": checks, "loss_steps": record}, args.label)

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self.previous = {name: 0.0 for name in TERMS}
            self.seen = 0

        def on_train_batch_end(self, batch, logs=None):
            # The logs hold running means since the epoch began: recover this step's value.
            self.seen += 1
            step = int(self.model.optimizer.iterations.numpy())
            record["steps"].append(step)
            for name in TERMS:
                mean = float(logs[name])
                record[name].append(self.seen * mean - (self.seen - 1) * self.previous[name])
                self.previous[name] = mean
            if step in check_steps:
                check(step)
            if step >= args.steps:
                self.model.stop_training = True

    anchors = anchor_fit(model, val_batches)
    print(json.dumps({"anchor_fit": anchors}), flush=True)
    if args.anchor_fit_only:
        return {"overrides": sets, "anchor_fit_val": anchors}
    if 0 in check_steps:
        check(0)
    epochs = -(-args.steps // per_epoch)
    model.fit(train_ds, epochs=epochs, steps_per_epoch=per_epoch, callbacks=[Recorder()], verbose=0)
    seconds = time.monotonic() - started
    steps = np.asarray(record["steps"])
    windows = {"step": []}
    for name in TERMS:
        windows[name] = []
    for end in range(args.log_every, len(steps) + 1, args.log_every):
        windows["step"].append(int(steps[end - 1]))
        for name in TERMS:
            windows[name].append(round(float(np.mean(record[name][end - args.log_every : end])), 4))
    return {
        "overrides": sets,
        "builder_kwargs": {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str))},
        "steps": int(steps[-1]) if len(steps) else 0,
        "train_seconds_with_checks": round(seconds, 1),
        "anchor_fit_val": anchors,
        "loss_windows": windows,
        "checks": checks,
        "map": maps,
    }


def write_json(path: str, result: dict, label: str) -> dict:
    """Merges `{label: result}` into the JSON file at `path` (atomically); returns it all."""
    everything = {}
    if os.path.exists(path):
        with open(path) as handle:
            everything = json.load(handle)
    everything[label] = result
    temporary = path + ".tmp"
    with open(temporary, "w") as handle:
        json.dump(everything, handle, indent=1)
    os.replace(temporary, path)
    return everything


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="folder of the train-*/val-* shards")
    parser.add_argument("--steps", type=int, default=204)
    parser.add_argument("--log-every", type=int, default=17)
    parser.add_argument("--check-steps", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--map-steps", type=lambda s: [int(v) for v in s.split(",")])
    parser.add_argument("--recall-batches", type=int, default=44, help="2-image val batches")
    parser.add_argument("--label", default="recipe")
    parser.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE")
    parser.add_argument("--output", required=True, help="JSON file (merged by --label)")
    parser.add_argument(
        "--anchor-fit-only", action="store_true", help="measure the anchors, do not train"
    )
    parser.add_argument("--partial", help="JSON file updated at every check (long runs)")
    parser.add_argument("--plot", help="PNG of the loss curves of every label in --output")
    args = parser.parse_args(argv)
    args.check_steps = args.check_steps or [0, args.steps]
    args.map_steps = args.map_steps or [args.steps]
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    result = diagnose(args)
    result["environment"] = environment()
    everything = write_json(args.output, result, args.label)
    if args.plot and not args.anchor_fit_only:
        curves = {
            label: {"step": run["loss_windows"]["step"], **run["loss_windows"]}
            for label, run in everything.items()
            if "loss_windows" in run
        }
        draw_losses(curves, args.plot)
    print(json.dumps({args.label: {k: result.get(k) for k in ("map", "steps")}}))


if __name__ == "__main__":
    main()
