"""`report.html`: one self-contained page a person can look at after `keras-dense evaluate`.

Everything is inline (PNG images as `data:` URIs, the bar chart as SVG, the style in the
page): the file opens offline, can be mailed or attached to a ticket, and references nothing
on a network. For segmentation it shows the headline scores, the per-class IoU and boundary
IoU as a table and a bar chart, the confusion matrix, and a gallery of the worst and the best
images (image, ground truth and prediction overlays, side by side). For detection it shows
mAP, the per-class AP, the precision-recall curve of each class (in its box colour), and the
worst and best images by their own F1 (ground-truth boxes beside the confident detections).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence

import cv2
import numpy as np

from keras_dense.data.image_io import encode_png
from keras_dense.prediction.palette import class_colour, draw_boxes, overlay, voc_palette

GALLERY_HEIGHT = 192  # pixels of one gallery row (the image and its two overlays)

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; max-width: 80em; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: right; }
th { background: #f0f0f0; } td.name { text-align: left; }
.swatch { display: inline-block; width: 1em; height: 1em; margin-right: 0.5em;
  vertical-align: middle; border: 1px solid #888; }
figure { display: inline-block; margin: 0.5em; } figcaption { font-size: 0.9em; }
img { image-rendering: pixelated; border: 1px solid #ccc; }
"""


def png_data_uri(image: np.ndarray) -> str:
    """An RGB (or grey) uint8 image as a `data:image/png;base64,...` URI."""
    return "data:image/png;base64," + base64.b64encode(encode_png(image)).decode("ascii")


def gallery_strip(image: np.ndarray, truth: np.ndarray, predicted: np.ndarray, ignore_label: int):
    """The image, its ground truth and its prediction overlaid, side by side, scaled to
    `GALLERY_HEIGHT` pixels high (nearest neighbour when enlarging: labels stay crisp)."""
    shown_truth = np.where(truth == ignore_label, 0, truth)
    panels = [image, overlay(image, shown_truth), overlay(image, predicted)]
    return _scaled_strip(np.concatenate([np.asarray(p, np.uint8) for p in panels], axis=1))


def detection_strip(
    image: np.ndarray, truth: dict, found: dict, class_names: Sequence[str], score_threshold: float
) -> np.ndarray:
    """The ground-truth boxes and the detections scoring at least `score_threshold`, side by
    side, scaled to `GALLERY_HEIGHT` pixels high (area-averaged when shrinking)."""
    confident = np.asarray(found["scores"]).reshape(-1) >= score_threshold
    panels = [
        draw_boxes(image, truth["boxes"], np.asarray(truth["labels"]), None, class_names),
        draw_boxes(
            image,
            np.asarray(found["boxes"]).reshape(-1, 4)[confident],
            np.asarray(found["labels"]).reshape(-1)[confident],
            np.asarray(found["scores"]).reshape(-1)[confident],
            class_names,
        ),
    ]
    return _scaled_strip(np.concatenate(panels, axis=1))


def _scaled_strip(strip: np.ndarray) -> np.ndarray:
    factor = GALLERY_HEIGHT / strip.shape[0]
    size = (max(1, round(strip.shape[1] * factor)), GALLERY_HEIGHT)
    interpolation = cv2.INTER_NEAREST if factor >= 1 else cv2.INTER_AREA
    return cv2.resize(strip, size, interpolation=interpolation)


def _bar_chart(names: Sequence[str], series: dict[str, list], colours: dict[str, str]) -> str:
    """Horizontal grouped bars in [0, 1] as inline SVG."""
    row, bar, left, width = 26, 10, 160, 420
    height = row * len(names) + 40
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 60}" '
        f'height="{height}" role="img" aria-label="per-class scores">'
    ]
    for tick in range(0, 11, 2):
        x = left + width * tick / 10
        parts.append(
            f'<line x1="{x}" y1="10" x2="{x}" y2="{height - 25}" stroke="#ddd"/>'
            f'<text x="{x}" y="{height - 10}" font-size="11" text-anchor="middle">'
            f"{tick / 10:.1f}</text>"
        )
    for i, name in enumerate(names):
        y = 12 + i * row
        parts.append(
            f'<text x="{left - 6}" y="{y + bar}" font-size="12" text-anchor="end">'
            f"{html.escape(name)}</text>"
        )
        for k, (label, values) in enumerate(series.items()):
            value = values[i]
            if value is None or value != value:
                continue
            parts.append(
                f'<rect x="{left}" y="{y + k * bar}" width="{width * value:.1f}" '
                f'height="{bar - 1}" fill="{colours[label]}"><title>{html.escape(label)} '
                f"{value:.4f}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _score(value) -> str:
    return "n/a" if value is None or value != value else f"{value:.4f}"


def segmentation_report_html(
    report: dict, class_names: Sequence[str], confusion_png: np.ndarray, title: str
) -> str:
    """The segmentation report page.

    Args:
        report: `evaluate`'s report (`mean_iou`, `per_class_iou`, optionally
            `boundary_iou` / `per_class_boundary_iou`, `images`, `_gallery`: a list of
            `{"record", "value", "strip", "kind"}` with `strip` an RGB array and `value` the
            image's own mIoU).
        class_names: The classes, in label order (their palette colours).
        confusion_png: The confusion matrix image (RGB).
        title: The page's title (the model's file name).

    Returns:
        The HTML text.
    """
    palette = voc_palette(max(len(class_names), 1))
    iou = [report["per_class_iou"].get(name) for name in class_names]
    boundary = report.get("per_class_boundary_iou") or {}
    boundary_values = [boundary.get(name) for name in class_names]
    rows = []
    for index, name in enumerate(class_names):
        r, g, b = (int(v) for v in palette[index])
        rows.append(
            f'<tr><td class="name"><span class="swatch" style="background:rgb({r},{g},{b})">'
            f"</span>{html.escape(name)}</td><td>{_score(iou[index])}</td>"
            f"<td>{_score(boundary_values[index]) if boundary else 'n/a'}</td></tr>"
        )
    series = {"IoU": iou}
    if boundary:
        series["boundary IoU"] = boundary_values
    colours = {"IoU": "#3b6fb6", "boundary IoU": "#e08a2c"}
    chart = (
        _bar_chart(list(class_names), series, colours)
        + "<p>"
        + " ".join(
            f'<span class="swatch" style="background:{colours[label]}"></span>{label}'
            for label in series
        )
        + "</p>"
    )
    headline = (
        f"mIoU <b>{_score(report.get('mean_iou'))}</b>, boundary IoU "
        f"<b>{_score(report.get('boundary_iou'))}</b>, pixel accuracy "
        f"{_score(report.get('pixel_accuracy'))}, over {report.get('images', 0)} images"
    )
    body = (
        "<h2>Per class</h2><table><tr><th>class</th><th>IoU</th><th>boundary IoU</th></tr>"
        + "".join(rows)
        + f"</table>{chart}<h2>Confusion matrix</h2>"
        f'<img src="{png_data_uri(confusion_png)}" alt="confusion matrix">'
        + _gallery_html(report.get("_gallery", []), "mIoU", "image, ground truth, prediction")
    )
    return _page(title, report, headline, body)


def _gallery_html(items: Sequence[dict], value_name: str, panels: str) -> str:
    """The worst and best images' figures (`Gallery.items()`), under two headings."""
    sections = []
    for kind, heading in (("worst", "Worst images"), ("best", "Best images")):
        figures = [
            f'<figure><img src="{png_data_uri(item["strip"])}" alt="{html.escape(item["record"])}">'
            f"<figcaption>{html.escape(item['record'])}: {value_name} {_score(item['value'])} "
            f"({panels})</figcaption></figure>"
            for item in items
            if item["kind"] == kind
        ]
        if figures:
            sections.append(f"<h2>{heading}</h2>" + "".join(figures))
    return "".join(sections)


def _page(title: str, report: dict, headline: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p>data: {html.escape(str(report.get('data', '')))}</p>"
        f"<p>{headline}</p>{body}</body></html>\n"
    )


def _class_colour(label: int) -> str:
    r, g, b = class_colour(label)
    return f"rgb({r},{g},{b})"


def _curve_points(recall, precision, most: int = 300) -> str:
    """SVG polyline points of a precision-recall curve, at most `most` of them."""
    recall = np.asarray(recall, np.float64)
    precision = np.asarray(precision, np.float64)
    if recall.size:  # from the precision axis: the curve starts at recall 0
        recall, precision = np.r_[0.0, recall], np.r_[precision[0], precision]
    if recall.size > most:
        keep = np.unique(np.linspace(0, recall.size - 1, most).round().astype(int))
        recall, precision = recall[keep], precision[keep]
    left, top, size = 50, 10, 360
    return " ".join(
        f"{left + size * r:.1f},{top + size * (1 - p):.1f}" for r, p in zip(recall, precision)
    )


def _pr_chart(curves: dict, class_names: Sequence[str]) -> str:
    """Precision-recall curves, one polyline per class in its box colour, as inline SVG."""
    left, top, size = 50, 10, 360
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + size + 20}" '
        f'height="{top + size + 45}" role="img" aria-label="precision-recall curves">'
    ]
    for tick in range(0, 11, 2):
        offset = size * tick / 10
        parts.append(
            f'<line x1="{left + offset}" y1="{top}" x2="{left + offset}" y2="{top + size}" '
            f'stroke="#ddd"/><line x1="{left}" y1="{top + size - offset}" x2="{left + size}" '
            f'y2="{top + size - offset}" stroke="#ddd"/>'
            f'<text x="{left + offset}" y="{top + size + 15}" font-size="11" '
            f'text-anchor="middle">{tick / 10:.1f}</text>'
            f'<text x="{left - 6}" y="{top + size - offset + 4}" font-size="11" '
            f'text-anchor="end">{tick / 10:.1f}</text>'
        )
    parts.append(
        f'<text x="{left + size / 2}" y="{top + size + 35}" font-size="12" '
        f'text-anchor="middle">recall</text><text x="12" y="{top + size / 2}" font-size="12" '
        f'transform="rotate(-90 12 {top + size / 2})" text-anchor="middle">precision</text>'
    )
    for name, curve in curves.items():
        label = curve.get("label", 0)
        parts.append(
            f'<polyline fill="none" stroke="{_class_colour(label)}" stroke-width="2" '
            f'points="{_curve_points(curve["recall"], curve["precision"])}">'
            f"<title>{html.escape(name)}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def detection_report_html(
    report: dict, class_names: Sequence[str], title: str, headline: str | None = None
) -> str:
    """The detection report page: mAP, per-class AP with precision-recall curves, gallery.

    Args:
        report: `evaluate`'s detection report (`map`, `ap`, `images`, optionally `_curves`:
            `{class name: {"label", "recall": [...], "precision": [...]}}` and `_gallery`: a list of
            `{"record", "value", "strip", "kind"}` with `value` the image's F1).
        class_names: The object classes, in label order (their box colours).
        title: The page's title (the model's file name).
        headline: Scores shown before the mAP (HTML), e.g. an instance model's COCO AP.

    Returns:
        The HTML text.
    """
    rows = []
    for index, name in enumerate(class_names):
        ap = report["ap"].get(name)
        rows.append(
            f'<tr><td class="name"><span class="swatch" style="background:'
            f'{_class_colour(index + 1)}"></span>{html.escape(name)}</td>'
            f"<td>{_score(ap)}</td></tr>"
        )
    curves = report.get("_curves") or {}
    sliced = report.get("slice")
    headline = (
        f"{headline or ''}mAP <b>{_score(report.get('map'))}</b> over "
        f"{report.get('images', 0)} images"
    )
    if sliced:
        headline += (
            f" (sliced: {sliced['tile']} px tiles, overlap {sliced['overlap']:g}, "
            f"{sliced.get('merge', 'nms')} merge)"
        )
    body = (
        "<h2>Per class</h2><table><tr><th>class</th><th>AP</th></tr>"
        + "".join(rows)
        + "</table>"
        + (f"<h2>Precision-recall</h2>{_pr_chart(curves, class_names)}" if curves else "")
        + _gallery_html(
            report.get("_gallery", []),
            "F1",
            f"ground truth; detections scoring at least {report.get('_gallery_threshold', 0.5):g}",
        )
    )
    return _page(title, report, headline, body)
