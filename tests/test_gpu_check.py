"""benchmarks/gpu_check.py: skips cleanly without a GPU; `--smoke` runs every section."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib

import pytest
import tensorflow as tf

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_gpu_check():
    path = REPO_ROOT / "benchmarks" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_skips_with_one_json_and_exit_code_0_without_a_gpu(capsys):
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("a GPU is present: the skip path does not apply")
    gpu_check = load_gpu_check()
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    result = json.loads(out[0])
    assert result["skipped"] is True and "no GPU" in result["reason"]


@pytest.mark.skipif(
    os.environ.get("KERAS_DENSE_SMOKE") != "1",
    reason="minutes on CPU; run with KERAS_DENSE_SMOKE=1 (the smoke command)",
)
def test_smoke_runs_every_section(capsys):
    gpu_check = load_gpu_check()
    assert gpu_check.main(["--smoke", "--budget-s", "600"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    sections = result["sections"]
    for name in ("segmentation", "fast_rcnn", "crf", "roi_pooling", "input_pipeline"):
        assert "error" not in sections[name], sections[name]
    runs = sections["segmentation"]["runs"]
    # Every configuration ran or reports its own error (e.g. an op XLA cannot compile).
    assert len(runs) == 16, runs
    assert all("images_per_s" in r or "error" in r for r in runs.values()), runs
    assert sum("images_per_s" in r for r in runs.values()) >= 8, runs
    assert "images_per_s" in sections["fast_rcnn"]
    assert "seconds" in sections["crf"]["tf_on_device"]
    assert "forward_s" in sections["roi_pooling"]["max"]
    assert sections["input_pipeline"]["host_images_per_s"] > 0


def test_known_upstream_issue_is_labelled():
    gpu_check = load_gpu_check()
    message = "InternalError: Seen floating point types of different precisions in %MaxPoolGrad"
    labelled = gpu_check._known_issue({"error": message})
    assert "upstream" in labelled["known_issue"] and labelled["error"] == message
    assert "known_issue" not in gpu_check._known_issue({"error": "OOM when allocating"})
