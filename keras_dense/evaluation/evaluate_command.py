"""`keras-dense evaluate --model M --data PATTERN [--crf] [--tiled] [--output DIR]`."""

from __future__ import annotations

import argparse
import json
import os


def register(sub) -> None:
    """Adds the `evaluate` command to the CLI's subparsers."""
    parser = sub.add_parser(
        "evaluate",
        help="score a saved model on TFRecord shards (mIoU, or VOC mAP for detection)",
        description="Segmentation: per-class IoU, mean IoU, pixel accuracy and "
        "frequency-weighted IoU over the confusion matrix (ignore label skipped), written as "
        "JSON plus a confusion-matrix PNG. Detection: PASCAL VOC mAP as JSON.",
    )
    parser.add_argument("--model", required=True, help="the saved model (X.keras, card X.json)")
    parser.add_argument("--data", required=True, help="glob pattern of TFRecord shards")
    parser.add_argument("--crf", action="store_true", help="dense-CRF refinement (segmentation)")
    parser.add_argument(
        "--tiled",
        action="store_true",
        help="overlap-tile inference for every image (default: only for large images)",
    )
    parser.add_argument(
        "--use-07-metric", action="store_true", help="detection: VOC2007 11-point AP"
    )
    parser.add_argument(
        "--output",
        help="folder for metrics.json and confusion_matrix.png (default: beside "
        "the model, <model name>_eval/)",
    )
    parser.set_defaults(run=run)


def _json_safe(value):
    """NaN (e.g. the mean over no class) becomes null: strict JSON has no NaN."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def run(args: argparse.Namespace) -> int:
    """Evaluates, writes the JSON (and PNG) atomically and prints the headline numbers."""
    from keras_dense.data.image_io import encode_png
    from keras_dense.data.writer import atomic_write_bytes
    from keras_dense.evaluation.confusion_image import confusion_matrix_image
    from keras_dense.evaluation.evaluator import evaluate_detection, evaluate_segmentation
    from keras_dense.prediction.inference import load_model_with_card

    model, card = load_model_with_card(args.model)
    output = args.output or os.path.splitext(args.model)[0] + "_eval"
    os.makedirs(output, exist_ok=True)
    report = {"model": args.model, "data": args.data, "task": card["task"]}
    if card["task"] == "detection":
        if args.crf:
            raise ValueError("--crf applies to segmentation models only")
        report.update(evaluate_detection(model, card, args.data, args.use_07_metric))
        print(f"mAP = {report['map']:.4f} over {report['images']} images")
        for name, ap in report["ap"].items():
            print(f"  {name:>20}: AP {ap:.4f}")
    else:
        cm, scores = evaluate_segmentation(
            model, card, args.data, crf=args.crf, tiled=True if args.tiled else None
        )
        report.update(scores, crf=args.crf, confusion_matrix=cm.tolist())
        image = confusion_matrix_image(cm, card["classes"], title=os.path.basename(args.model))
        atomic_write_bytes(os.path.join(output, "confusion_matrix.png"), encode_png(image))
        print(
            f"mIoU = {scores['mean_iou']:.4f}, pixel accuracy = {scores['pixel_accuracy']:.4f}, "
            f"frequency-weighted IoU = {scores['frequency_weighted_iou']:.4f} over "
            f"{scores['images']} images"
        )
        for name, iou in scores["per_class_iou"].items():
            print(f"  {name:>20}: IoU {'n/a' if iou is None else f'{iou:.4f}'}")
    text = json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n"
    atomic_write_bytes(os.path.join(output, "metrics.json"), text.encode())
    print(f"wrote {output}/metrics.json")
    return 0
