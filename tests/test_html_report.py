"""`evaluate`'s report.html: valid, self-contained HTML whose numbers are the metrics', with
a gallery of the worst and best images; rendered by headless Chromium when it is installed."""

from __future__ import annotations

import base64
import html.parser
import json
import shutil
import subprocess

import cv2
import keras
import numpy as np
import pytest

from keras_dense import cli
from keras_dense.apps import unet
from keras_dense.data import SHAPE_CLASSES, convert_shapes
from keras_dense.utils.model_card import write_model_card


class _Page(html.parser.HTMLParser):
    """Collects tags (checking that they nest) and every URL-bearing attribute."""

    VOID = {"meta", "img", "br", "hr", "link", "input", "line", "rect"}

    def __init__(self):
        super().__init__()
        self.stack, self.urls, self.images, self.text = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href", "xlink:href", "action"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "img":
            self.images.append(attrs["src"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in self.VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, (tag, self.stack[-3:])
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    convert_shapes(str(root / "val"), 10, size=32, seed=3, progress=False)
    keras.utils.set_random_seed(0)
    model = unet(4, input_shape=(None, None, 3), padding="same", filters=4, depth=2)
    path = str(root / "model.keras")
    model.save(path)
    card = {"task": "segmentation", "classes": list(SHAPE_CLASSES), "normalization": "caffe"}
    write_model_card(path, {**card, "ignore_label": 255})
    out = root / "eval"
    args = ["evaluate", "--model", path, "--data", str(root / "val-*.tfrecord")]
    assert cli.main([*args, "--output", str(out)]) == 0
    return out


def test_report_is_valid_self_contained_and_states_the_metrics(evaluated):
    page_text = (evaluated / "report.html").read_text()
    metrics = json.loads((evaluated / "metrics.json").read_text())
    assert "_gallery" not in metrics and "gallery" not in metrics
    page = _Page()
    page.feed(page_text)
    page.close()
    assert page.stack == [], f"unclosed tags {page.stack}"
    # Self-contained: every URL is inline data, nothing to fetch.
    assert page.urls and all(url.startswith("data:image/png;base64,") for url in page.urls)
    assert "http://" not in page_text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page_text
    # The images decode; the gallery has the 4 worst and 4 best of the 10 images.
    decoded = [
        cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), 1)
        for url in page.images
    ]
    assert all(image is not None and image.size for image in decoded)
    assert len(decoded) == 1 + 8  # confusion matrix + gallery
    assert all(image.shape[0] == 192 for image in decoded[1:])  # enlarged to be seen
    text = "".join(page.text)
    assert f"{metrics['mean_iou']:.4f}" in text and f"{metrics['boundary_iou']:.4f}" in text
    for name, value in metrics["per_class_iou"].items():
        assert name in text
        if value is not None:
            assert f"{value:.4f}" in text


def test_gallery_orders_the_worst_before_the_best(evaluated):
    page_text = (evaluated / "report.html").read_text()
    worst = page_text.index("Worst images")
    best = page_text.index("Best images")
    assert worst < best
    scores = [
        float(chunk.split("</figcaption>")[0].split("mIoU ")[1].split(" ")[0])
        for chunk in page_text.split("<figcaption>")[1:]
    ]
    assert scores[:4] == sorted(scores[:4]) and scores[4:] == sorted(scores[4:], reverse=True)
    assert max(scores[:4]) <= min(scores[4:])


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    _chromium() is None, reason="headless Chromium (Debian's chromium) is not installed"
)
def test_chromium_renders_the_report(evaluated, tmp_path):
    """A screenshot of the page is not blank, and the DOM says every image decoded."""
    browser = _chromium()
    flags = [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
    ]
    page = (evaluated / "report.html").resolve().as_uri()
    shot = tmp_path / "report.png"
    subprocess.run(
        [browser, *flags, f"--screenshot={shot}", "--window-size=1200,1600", page],
        check=True,
        capture_output=True,
        timeout=120,
    )
    image = cv2.imread(str(shot))
    assert image is not None and image.std() > 10, "the page rendered blank"
    # Every <img> reports a natural width once loaded (0 for a broken image).
    probe = tmp_path / "probe.html"
    probe.write_text(
        (evaluated / "report.html")
        .read_text()
        .replace(
            "</body>",
            "<script>window.onload = () => { document.title = 'loaded:' + "
            "Array.from(document.images).map(i => i.naturalWidth > 0).join(','); };"
            "</script></body>",
        )
    )
    dom = subprocess.run(
        [browser, *flags, "--dump-dom", probe.resolve().as_uri()],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    title = dom.split("<title>")[1].split("</title>")[0]
    assert title.startswith("loaded:") and "false" not in title and title.count("true") == 9
