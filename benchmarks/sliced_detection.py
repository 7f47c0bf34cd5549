"""Sliced against whole-image detection on real data, in the same run (issue 23).

For a trained Faster (or Fast) R-CNN and detection shards (e.g. BCCD's validation split), each
image is scored four ways: whole and sliced (`detect_objects_sliced`, `--tile`, `--overlap`),
at full resolution and upscaled by `--upscale` (2 by default: the objects become twice as large
in pixels while the detector still resizes each input to its card's size, which is where
slicing is meant to help). Reports VOC mAP (IoU 0.5) and COCO box AP including small-object AP
(APs: area below 32^2 px, measured in the scored image's pixels), the wall time of each way,
versions, the machine and the load average. Prints JSON.

    .venv/bin/python benchmarks/sliced_detection.py --model runs/.../best.keras \
        --data "tfrecords/results/bccd_fpn/val-*.tfrecord" [--tile 512] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import environment  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.2)
    parser.add_argument("--upscale", type=float, default=2.0)
    parser.add_argument("--score-threshold", type=float, default=0.05)
    parser.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    args = parser.parse_args(argv)

    import cv2
    import numpy as np

    from keras_dense.data import read_examples
    from keras_dense.evaluation.coco_map import coco_metrics
    from keras_dense.evaluation.voc_map import voc_detection_map
    from keras_dense.prediction.inference import detect_objects, detect_objects_sliced
    from keras_dense.tasks.model_loading import load_model_with_card

    load = [round(v, 2) for v in os.getloadavg()]
    model, card = load_model_with_card(args.model)
    ways = {}
    for factor in (1.0, args.upscale):
        for sliced in (False, True):
            ways[(factor, sliced)] = {"found": [], "truth": [], "seconds": 0.0}
    for index, example in enumerate(read_examples(args.data)):
        if args.limit and index == args.limit:
            break
        for (factor, sliced), way in ways.items():
            image = example["image"]
            if factor != 1.0:
                size = (round(image.shape[1] * factor), round(image.shape[0] * factor))
                image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
            height, width = image.shape[:2]
            start = time.perf_counter()
            if sliced:
                found = detect_objects_sliced(
                    model,
                    image,
                    card,
                    args.tile,
                    args.overlap,
                    score_threshold=args.score_threshold,
                )
            else:
                found = detect_objects(model, image, card, score_threshold=args.score_threshold)
            way["seconds"] += time.perf_counter() - start
            scale = np.array([height, width, height, width], np.float32)
            way["found"].append(found)
            way["truth"].append(
                {
                    "boxes": example["boxes"] * scale,
                    "labels": example["labels"],
                    "difficult": example.get("difficult", np.zeros(len(example["labels"]), bool)),
                }
            )
    results = {}
    for (factor, sliced), way in ways.items():
        voc = voc_detection_map(way["found"], way["truth"])
        coco = coco_metrics(way["found"], way["truth"], iou_types=("bbox",))["bbox"]
        name = f"{'sliced' if sliced else 'whole'}_x{factor:g}"
        results[name] = {
            "voc_map": round(float(voc["map"]), 4),
            "coco_AP": round(float(coco["AP"]), 4),
            "coco_APs": round(float(coco["APs"]), 4),
            "coco_APm": round(float(coco["APm"]), 4),
            "seconds": round(way["seconds"], 1),
            "images": len(way["found"]),
        }
    report = {
        "model": args.model,
        "data": args.data,
        "tile": args.tile,
        "overlap": args.overlap,
        "upscale": args.upscale,
        "results": results,
        "load_average_before": load,
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "environment": environment(),
    }
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
