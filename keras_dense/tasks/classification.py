"""Weakly supervised multi-label classification: image-level labels, localisation from maps.

Models are `keras_dense.apps.wsl_classifier`s: `(B, H, W, 3)` images to `(B, C)` logits, with
a `class_maps` layer that localises the classes. Training uses a sigmoid binary
cross-entropy on multi-hot image labels `(B, C)`.

Labels and class ids. The classes `C` are the data's class list without a leading
"background" (`keras_dense.data.class_lists.object_classes`): background is not a WSL class,
it is what no class map claims (see `keras_dense.localization.pseudo_label_masks`). Class
`c` (0-based) is, in the records:

- mask id `c + 1` when the manifest's class list starts with "background" (the shapes, VOC
  and COCO segmentation shards), else mask id `c` (the mask offset); the ignore label and
  the background id are never labels;
- box label `c + 1` (`image/object/class/label` is 1-based);
- image label `c + 1` (`image/class/label`, written by `keras-dense convert folders`, also
  1-based, 0 = background).

A record's image labels are the union of the three. Training crops a random window (area
in `[data.scale_range[0] ** 2, 1]` of the image, aspect 3/4..4/3), flips it left-right with
probability 1/2 (when `data.flip`), and resamples it to `data.crop_size` with one bilinear
`crop_and_resize`; the mask and box labels are those inside the window (a class whose pixels
or boxes all fall outside the crop is not a label of the crop); image labels are kept.
Validation during training resizes each full image to the crop size. `keras-dense evaluate`
runs every full image at its own size and reports the mAP (the main number: a 0.5 cut on
sigmoids is miscalibrated for weakly supervised scores), the accuracy at 0.5, the pointing
game at 0 px and at `EvaluateOptions.pointing_tolerance` px (default 3, for images up to
128 px; Oquab et al. use 18 px on VOC) against the masks (else the boxes) of the records,
the pointing score of the centre-point baseline (every class pointed at the image centre),
and CorLoc (`boxes_from_maps` at 0.2 of the peak against the record's boxes, or else the
boxes of each class's connected mask regions). With `--tta flip` and / or `--scales` the maps
of the pointing game and CorLoc are averaged over the flips and scales
(`keras_dense.localization.augmented_class_maps`; the mAP stays on the plain image).

Serving: `serving_default(image_bytes)` returns `scores` (N, C) sigmoid probabilities,
`logits` (N, C), `class_maps` (N, H, W, C) at each image's size (bilinear, zero beyond an
image in a batch of mixed sizes) and `image_sizes` (N, 2); `serving_tensor(images)` returns
the raw logits as `scores`.
"""

from __future__ import annotations

import json

import cv2
import keras
import numpy as np
import tensorflow as tf

from keras_dense.apps.wsl_classifier_model import CLASS_MAPS_LAYER, CLASS_WISE_LAYER
from keras_dense.data.class_lists import check_classifier_classes, object_classes
from keras_dense.data.classification_pipeline import (
    classification_dataset,
    evaluation_records,
    mask_offset,
)
from keras_dense.data.errors import BadInputError
from keras_dense.data.image_io import encode_png
from keras_dense.evaluation.localization_metrics import (
    corloc,
    multilabel_average_precision,
    pointing_game,
)
from keras_dense.localization import (
    augmented_class_maps,
    boxes_from_maps,
    check_classifier_records,
    check_finite,
    class_map_memory_problem,
    class_maps,
    points_from_maps,
)
from keras_dense.signatures.image_bytes import (
    centred_image,
    decode_batch,
    finish_normalization,
    image_at,
    pad_to,
)
from keras_dense.signatures.memory_budget import (
    SAFETY_FACTOR,
    activation_bytes,
    pixel_budget,
    serving_bytes_per_pixel,
)
from keras_dense.tasks.recipe_data import (
    check_batch_fits,
    no_auto_shard,
    normalization_mode,
    validation_dataset,
    worker_shards,
)
from keras_dense.tasks.task import (
    EvaluateOptions,
    ExportOptions,
    PredictOptions,
    Task,
    check_close,
    register_task,
)
from keras_dense.utils.card_fields import check_card_fields
from keras_dense.utils.errors import RecipeError
from keras_dense.utils.normalization import normalize
from keras_dense.utils.tta import TestTimeAugmentation

# CAM's box threshold (fraction of the map's peak) for CorLoc.
CORLOC_MAP_THRESHOLD = 0.2


def mask_region_boxes(mask: np.ndarray, ids) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of the 8-connected regions of each class id in a mask (inclusive pixels).

    Args:
        mask: (H, W) class ids.
        ids: The ids whose regions are boxed.

    Returns:
        `(boxes (m, 4) yxyx, labels (m,) the id of each)`.
    """
    boxes, labels = [], []
    for class_id in ids:
        region = (mask == class_id).astype(np.uint8)
        count, _, stats, _ = cv2.connectedComponentsWithStats(region, connectivity=8)
        x, y, w, h = (stats[1:count, i] for i in range(4))
        boxes.append(np.stack([y, x, y + h - 1, x + w - 1], -1))
        labels.append(np.full(count - 1, class_id))
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0, np.int64)
    return np.concatenate(boxes).astype(np.float64), np.concatenate(labels).astype(np.int64)


def _accumulate(total: dict | None, part: dict) -> dict:
    hits, counts = np.asarray(part["hits"]), np.asarray(part["counts"])
    if total is None:
        return {"hits": hits.copy(), "counts": counts.copy()}
    total["hits"] += hits
    total["counts"] += counts
    return total


def _rates(total: dict | None, names: list[str]) -> dict:
    if total is None:
        return {"accuracy": float("nan"), "mean_class_accuracy": float("nan"), "per_class": {}}
    hits, counts = total["hits"], total["counts"]
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)
    present = counts > 0
    return {
        "accuracy": float(hits.sum() / counts.sum()) if counts.sum() else float("nan"),
        "mean_class_accuracy": float(per_class[present].mean()) if present.any() else float("nan"),
        "per_class": {n: float(v) for n, v in zip(names, per_class)},
        "trials": int(counts.sum()),
    }


def evaluate_classification(
    model: keras.Model,
    card: dict,
    pattern,
    tolerance: float = 3.0,
    progress: bool = False,
    tta: TestTimeAugmentation | None = None,
    max_memory: int | None = None,
) -> dict:
    """mAP, accuracy at 0.5, pointing game (0 px and `tolerance`), centre baseline, CorLoc.

    Args:
        model: A `wsl_classifier`.
        card: Its model card (`classes`, `normalization`, `ignore_label`).
        pattern: Shards to evaluate on (full images, one at a time).
        tolerance: Pointing-game tolerance in pixels.
        progress: Unused (kept for the task interface).
        tta: Scales and flip over which the class maps of the pointing game and CorLoc are
            averaged (`keras_dense.localization.augmented_class_maps`); the scores (mAP) come
            from the plain image. None: the plain image only.
        max_memory: Bytes one image may take (`keras_dense.localization.
            class_map_bytes_per_pixel`); a larger one is refused, naming the record, before
            any is scored. None: not checked.

    Returns:
        The JSON-ready report.

    Raises:
        ValueError: The card's classes, ignore label or normalisation do not fit the model.
        keras_dense.data.BadInputError: The shards' class list differs from the card's, a
            record is unusable (named with its shard, source_id and field; see
            `keras_dense.data.classification_records`), there are no records, or an image is
            over `max_memory`.
    """
    check_card_fields(card, int(model.outputs[0].shape[-1]))
    check_classifier_classes(pattern, card)
    tta = tta or TestTimeAugmentation()
    names = list(card["classes"])
    num_classes = len(names)
    offset = mask_offset(pattern)
    ignore_label = 255 if card.get("ignore_label") is None else int(card["ignore_label"])
    records = check_classifier_records(model, pattern, names, offset, ignore_label, max_memory, tta)
    if not records.labelled:
        raise BadInputError(
            f"--data {pattern}",
            f"none of its {records.records} records is labelled with one of the model's classes "
            f"{names} (by a mask id, a box or image/class/label): the mAP is undefined",
        )
    normalization = card.get("normalization")
    scores, targets = [], []
    pointing = {"0": None, "tol": None, "centre_0": None, "centre_tol": None}
    found = None
    mask_ids = np.arange(num_classes) + offset
    box_ids = np.arange(num_classes) + 1
    for image, labels, mask, boxes, box_labels in evaluation_records(
        pattern, num_classes, offset, ignore_label
    ):
        x = np.asarray(normalize(tf.constant(image[None]), normalization))
        logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))[0]
        check_finite(logits, model, "scores")
        scores.append(logits)
        targets.append(labels)
        maps = augmented_class_maps(model, x, tta)
        points = points_from_maps(maps)
        height, width = image.shape[:2]
        centre = np.tile(np.array([[[height // 2, width // 2]]]), (1, num_classes, 1))
        if mask.size:
            truth, ids = mask[None], mask_ids
        else:
            truth, ids = [{"boxes": boxes, "labels": box_labels}], box_ids
        for key, guess, tol in (
            ("0", points, 0),
            ("tol", points, tolerance),
            ("centre_0", centre, 0),
            ("centre_tol", centre, tolerance),
        ):
            pointing[key] = _accumulate(pointing[key], pointing_game(guess, truth, tol, ids))
        if len(box_labels):
            gt = {"boxes": boxes, "labels": box_labels}
            gt_ids = box_ids
        elif mask.size:
            region_boxes, region_labels = mask_region_boxes(mask, mask_ids)
            gt, gt_ids = {"boxes": region_boxes, "labels": region_labels}, mask_ids
        else:
            continue
        predicted = boxes_from_maps(maps, CORLOC_MAP_THRESHOLD)
        found = _accumulate(found, corloc(predicted, [gt], class_ids=gt_ids))
    if not scores:
        raise ValueError(f"--data {pattern}: no records")
    scores, targets = np.stack(scores), np.stack(targets)
    ap = multilabel_average_precision(scores, targets)
    correct = (scores > 0) == (targets > 0.5)
    corloc_rates = _rates(found, names)
    return {
        "images": int(len(scores)),
        "map": ap["map"],
        "ap": {n: float(v) for n, v in zip(names, ap["ap"])},
        "ap_excluded": [names[c] for c in ap["excluded"]],
        "accuracy_at_0.5": float(correct.mean()),
        "pointing_tolerance": float(tolerance),
        "localization_tta": tta.to_json(),
        "pointing_0px": _rates(pointing["0"], names),
        "pointing": _rates(pointing["tol"], names),
        "centre_baseline_0px": _rates(pointing["centre_0"], names),
        "centre_baseline": _rates(pointing["centre_tol"], names),
        "corloc": {
            "corloc": corloc_rates["accuracy"],
            "mean_class_corloc": corloc_rates["mean_class_accuracy"],
            "per_class": corloc_rates["per_class"],
            "map_threshold": CORLOC_MAP_THRESHOLD,
        },
        "mask_offset": offset,
    }


def maps_model(model: keras.Model) -> keras.Model:
    """`images -> [logits (B, C), class maps (B, h, w, C)]` of a `wsl_classifier`.

    Raises:
        ValueError: The model has no `class_maps` layer.
    """
    names = {layer.name for layer in model.layers}
    if CLASS_MAPS_LAYER not in names:
        raise ValueError(
            f"model {model.name!r} has no layer named {CLASS_MAPS_LAYER!r}: the classification "
            "task serves keras_dense.apps.wsl_classifier models"
        )
    layer = CLASS_WISE_LAYER if CLASS_WISE_LAYER in names else CLASS_MAPS_LAYER
    return keras.Model(model.inputs, [model.outputs[0], model.get_layer(layer).output])


def classification_signatures(
    model: keras.Model,
    normalization: str | None,
    max_pixels: int | None = None,
    max_request_pixels: int | None = None,
) -> dict:
    """`serving_default` (image bytes) and `serving_tensor` (images) of a classifier.

    Every image runs alone at its own size (the maps are resized bilinearly to it with
    `tf.image.resize`); stock ops only.

    Args:
        model: A `wsl_classifier`.
        normalization: The model card's normalisation mode.
        max_pixels: Largest accepted image (pixels); None for the default.
        max_request_pixels: Largest accepted request (pixels over its images); None: none.

    Returns:
        `{"serving_default": ..., "serving_tensor": ...}` concrete functions.
    """
    probe = maps_model(model)
    num_classes = int(model.outputs[0].shape[-1])
    kwargs = {} if max_pixels is None else {"max_pixels": int(max_pixels)}
    if max_request_pixels is not None:
        kwargs["max_request_pixels"] = int(max_request_pixels)

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def serving_default(image_bytes):
        pixels, sizes = decode_batch(image_bytes, 3, **kwargs)
        height, width = tf.reduce_max(sizes[:, 0]), tf.reduce_max(sizes[:, 1])

        def one(index):
            image = centred_image(image_at(pixels, sizes, index, 3), normalization)
            logits, maps = probe(finish_normalization(image, normalization)[None], training=False)
            maps = tf.image.resize(tf.cast(maps, tf.float32), sizes[index], method="bilinear")
            return tf.cast(logits[0], tf.float32), pad_to(maps[0], height, width)

        logits, maps = tf.map_fn(
            one,
            tf.range(tf.shape(sizes)[0]),
            fn_output_signature=(
                tf.TensorSpec([num_classes], tf.float32),
                tf.TensorSpec([None, None, num_classes], tf.float32),
            ),
        )
        return {
            "scores": tf.sigmoid(logits),
            "logits": logits,
            "class_maps": maps,
            "image_sizes": sizes,
        }

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32, "images")])
    def serving_tensor(images):
        return {"scores": tf.cast(model(images, training=False), tf.float32)}

    return {
        "serving_default": serving_default.get_concrete_function(),
        "serving_tensor": serving_tensor.get_concrete_function(),
    }


class ClassificationTask(Task):
    """Weakly supervised multi-label classification (see the module docstring)."""

    name = "classification"
    builders = ("wsl_classifier",)
    command_options = {
        "evaluate": frozenset({"tta", "scales", "pointing_tolerance", "max_memory"}),
        "predict": frozenset({"max_memory"}),
    }

    def class_names(self, names):
        return object_classes(names)

    def check_recipe(self, recipe):
        if recipe["data"]["channels"] != 3:
            raise RecipeError("recipe key 'data.channels': wsl_classifier needs 3-channel images")

    def datasets(self, recipe, model, num_workers, worker_index):
        data, training = recipe["data"], recipe["training"]
        num_classes = int(model.outputs[0].shape[-1])
        offset = mask_offset(data["train"])
        ignore_label = 255 if data["ignore_label"] is None else int(data["ignore_label"])
        for key in ("train", "validation"):
            if data.get(key):  # every record checked once, before the first step
                what = f"data.{key} = {data[key]!r}"
                check_classifier_records(
                    model, data[key], num_classes, offset, ignore_label, what=what
                )
        common = {
            "num_classes": num_classes,
            "crop_size": tuple(data["crop_size"]),
            "normalization": normalization_mode(data),
            "offset": offset,
            "ignore_label": data["ignore_label"],
            "cache": data["cache"],
            "seed": recipe["seed"],
        }
        batch = training["batch_size"]
        train = classification_dataset(
            worker_shards(data["train"], "data.train", num_workers, worker_index),
            batch,
            training=True,
            min_scale=min(1.0, float(data["scale_range"][0])),
            flip=data["flip"],
            shuffle_buffer=data["shuffle_buffer"],
            **common,
        ).repeat()
        records = check_batch_fits(data["train"], batch)
        steps = training["steps_per_epoch"] or records // batch
        validation, validation_steps = validation_dataset(
            lambda pattern, size: classification_dataset(pattern, size, **common),
            recipe,
            num_workers,
            worker_index,
        )
        if num_workers > 1:
            train = no_auto_shard(train)
        return train, validation, steps, validation_steps

    def compile(self, model, recipe, optimizer, num_classes):
        # `training.metrics` (segmentation metrics) do not apply: AUC and accuracy at 0.5.
        model.compile(
            optimizer=optimizer,
            loss=keras.losses.BinaryCrossentropy(from_logits=True),
            metrics=[
                keras.metrics.AUC(
                    multi_label=True, num_labels=num_classes, from_logits=True, name="auc"
                ),
                keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy_at_0_5"),
            ],
            jit_compile=recipe["training"]["jit_compile"],
        )

    def monitor(self, recipe, has_validation):
        return ("val_auc" if has_validation else "auc"), "max"

    def card_fields(self, recipe):
        # No background threshold: it depends on the trained maps, so `keras-dense
        # tune-threshold` chooses it on held-out masks and adds `background_threshold`
        # (`background_threshold_crf`); until then `pseudo-label` uses
        # DEFAULT_BACKGROUND_THRESHOLD.
        return {
            "input_size": list(recipe["data"]["crop_size"]),
            "mask_offset": mask_offset(recipe["data"]["train"]),
        }

    def evaluate(self, model, card, pattern, options: EvaluateOptions):
        if options.crf:
            raise ValueError("--crf applies to segmentation models only")
        return evaluate_classification(
            model,
            card,
            pattern,
            options.pointing_tolerance,
            tta=options.tta,
            max_memory=options.max_memory,
        )

    def report_lines(self, report):
        tol = report["pointing_tolerance"]
        lines = [
            f"mAP = {report['map']:.4f} over {report['images']} images "
            f"(accuracy at 0.5 = {report['accuracy_at_0.5']:.4f})"
        ]
        excluded = report.get("ap_excluded") or []
        if excluded:
            lines.append(
                f"left out of the mAP: {len(excluded)} class(es) without a positive image: "
                f"{', '.join(excluded)}"
            )
        if report["pointing"].get("trials"):
            lines.append(
                f"pointing game: {report['pointing_0px']['accuracy']:.4f} at 0 px, "
                f"{report['pointing']['accuracy']:.4f} at {tol:g} px (centre baseline "
                f"{report['centre_baseline_0px']['accuracy']:.4f} / "
                f"{report['centre_baseline']['accuracy']:.4f})"
            )
        else:
            lines.append("pointing game: not measured (no labelled class has a mask or a box)")
        if np.isfinite(report["corloc"]["corloc"]):
            lines.append(f"CorLoc = {report['corloc']['corloc']:.4f}")
        else:
            lines.append("CorLoc: not measured (no labelled class has a mask or a box)")
        return lines

    def plan_prediction(self, model, card, height, width, max_memory, options=None):
        check_card_fields(card, int(model.outputs[0].shape[-1]))
        # The maps cannot be tiled without changing them: the image fits whole or is refused.
        problem = class_map_memory_problem(model, height, width, max_memory)
        if problem:
            raise ValueError(problem)
        return "whole"

    def predict_image(self, model, card, rgb, options: PredictOptions, plan: str):
        if options.tta.enabled or options.crf:
            raise ValueError("--tta, --scales and --crf apply to segmentation models only")
        check_card_fields(card, int(model.outputs[0].shape[-1]))
        x = np.asarray(normalize(tf.constant(rgb[None]), card.get("normalization")))
        logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))[0]
        check_finite(logits, model, "scores")
        probabilities = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
        maps = class_maps(model, x)[0]
        best = int(np.argmax(logits))
        heat = maps[..., best] - maps[..., best].min()
        heat = (255 * heat / max(float(heat.max()), 1e-12)).astype(np.uint8)
        names = list(card["classes"])
        result = [{"class": names[i], "score": float(p)} for i, p in enumerate(probabilities)]
        return {
            "_scores.json": (json.dumps(result, indent=2) + "\n").encode(),
            "_class_map.png": encode_png(heat),
        }

    def export_signatures(self, model, card, options: ExportOptions):
        if options.tta.enabled:
            raise ValueError("--tta and --scales apply to segmentation models only")
        num_classes = int(model.outputs[0].shape[-1])
        sizes = (64, 128)
        used = [activation_bytes(model, s, s, 3) for s in sizes]
        slope = (used[1] - used[0]) / (sizes[1] ** 2 - sizes[0] ** 2)
        # The maps at the image size, their padded copy and the output: 3 x 4 bytes x C.
        extra = serving_bytes_per_pixel(3, 0) + 3 * 4 * num_classes
        budget = pixel_budget(
            SAFETY_FACTOR * (slope + extra), options.max_request_memory, options.max_pixels
        )
        signatures = classification_signatures(
            model, card["normalization"], budget.max_image_pixels, budget.max_request_pixels
        )
        return signatures, {"normalization": card["normalization"]}, budget

    def verify_export(self, loaded, model, serving, tolerance):
        rng = np.random.default_rng(0)
        images = rng.normal(size=(2, 48, 64, 3)).astype(np.float32)
        got = loaded.signatures["serving_tensor"](images=tf.constant(images))["scores"]
        want = np.asarray(keras.ops.convert_to_numpy(model(images, training=False)), np.float32)
        check_close("scores", got.numpy(), want, tolerance)
        rgb = rng.integers(0, 256, size=(40, 56, 3), dtype=np.uint8)
        served = loaded.signatures["serving_default"](image_bytes=tf.constant([encode_png(rgb)]))
        x = np.asarray(normalize(tf.constant(rgb[None]), serving.get("normalization")))
        logits = np.asarray(keras.ops.convert_to_numpy(model(x, training=False)), np.float32)
        check_close("logits", served["logits"].numpy(), logits, tolerance)
        if tuple(served["class_maps"].shape[1:3]) != (40, 56):
            raise RuntimeError(
                "export verification failed: serving_default's class_maps are "
                f"{tuple(served['class_maps'].shape[1:3])}, expected the image size (40, 56)"
            )


register_task(ClassificationTask())
