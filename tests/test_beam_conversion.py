"""Conversion on Apache Beam: the same shard bytes and manifest as the local writer.

Runs Beam's FnApiRunner with 2 worker processes (the `beam` extra; skipped without it), except
the `ram://` test, which must run in this process (TF's RAM file system is per process).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
import pytest

pytest.importorskip("apache_beam", reason="the 'beam' extra (apache-beam) is not installed")

import tensorflow as tf  # noqa: E402
from test_convert_voc import _devkit  # noqa: E402
from test_instance_data import _instances_folder  # noqa: E402

from keras_dense import cli  # noqa: E402
from keras_dense.data import BadInputError, convert_instances, convert_pairs, convert_voc  # noqa: E402
from keras_dense.data.beam_options import parse_beam_options  # noqa: E402
from keras_dense.data.beam_writer import load_item, record_ranks, write_shard  # noqa: E402

from data_fixtures import make_pairs_folder  # noqa: E402

TWO_WORKERS = ["direct_num_workers=2", "direct_running_mode=multi_processing"]
IN_PROCESS = ["direct_num_workers=1", "direct_running_mode=in_memory"]


def _files(output: str) -> dict[str, bytes]:
    """Every file of a shard set (shards and manifest) by base name."""
    paths = tf.io.gfile.glob(f"{output}-*-of-*.tfrecord") + [f"{output}.json"]
    out = {}
    for path in paths:
        with tf.io.gfile.GFile(path, "rb") as f:
            out[os.path.basename(path)] = f.read()
    return out


def _same_set(local: str, beam: str) -> None:
    a, b = _files(local), _files(beam)
    assert sorted(a) == sorted(b)
    for name in a:
        if name.endswith(".json"):
            assert json.loads(a[name]) == json.loads(b[name]), name
        else:
            assert a[name] == b[name], f"{name}: shard bytes differ"


def _corrupt(path) -> None:
    """Cuts an image file in half (a truncated download)."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_pairs_with_a_bad_image_skipped_equal_the_local_set(tmp_path):
    make_pairs_folder(tmp_path / "in", n=7)
    _corrupt(tmp_path / "in" / "images" / "img03.jpg")
    common = ["--images", str(tmp_path / "in/images"), "--masks", str(tmp_path / "in/masks")]
    common += ["--classes", "a,b,c", "--num-shards", "3", "--on-error", "skip"]
    assert cli.main(["convert", "pairs", *common, "--output", str(tmp_path / "local/set")]) == 0
    beam = ["--runner", "beam"] + [f"--beam-option={o}" for o in TWO_WORKERS]
    argv = ["convert", "pairs", *common, *beam, "--output", str(tmp_path / "beam/set")]
    assert cli.main(argv) == 0
    _same_set(str(tmp_path / "local/set"), str(tmp_path / "beam/set"))
    manifest = json.loads((tmp_path / "beam/set.json").read_text())
    assert manifest["num_images"] == 6
    assert [s["input"] for s in manifest["skipped"]] == [str(tmp_path / "in/images/img03.jpg")]
    assert sorted(os.listdir(tmp_path / "beam")) == sorted(_files(str(tmp_path / "beam/set")))


def test_fail_mode_names_the_first_bad_input_and_keeps_the_previous_set(tmp_path):
    make_pairs_folder(tmp_path / "in", n=6)
    images, masks = str(tmp_path / "in/images"), str(tmp_path / "in/masks")
    output = str(tmp_path / "out/set")
    convert_pairs(images, masks, output, classes="a,b,c", num_shards=2, progress=False)
    before = _files(output)
    for stem in ("img04.png", "img01.jpg"):
        _corrupt(tmp_path / "in" / "images" / stem)
    with pytest.raises(BadInputError) as local:
        convert_pairs(images, masks, str(tmp_path / "local/set"), classes="a,b,c", progress=False)
    with pytest.raises(BadInputError) as beam:
        convert_pairs(
            images,
            masks,
            output,
            classes="a,b,c",
            num_shards=2,
            progress=False,
            runner="beam",
            beam_options=TWO_WORKERS,
        )
    assert str(beam.value) == str(local.value) and "img01.jpg" in str(beam.value)
    assert _files(output) == before  # untouched
    assert sorted(os.listdir(tmp_path / "out")) == sorted(before)  # no staging folder left


def test_voc_detection_equals_the_local_set(tmp_path):
    _devkit(tmp_path / "voc", np.random.default_rng(1), n=5)
    kwargs = {"task": "detection", "num_shards": 2, "progress": False}
    convert_voc(str(tmp_path / "voc"), str(tmp_path / "local/det"), **kwargs)
    convert_voc(
        str(tmp_path / "voc"),
        str(tmp_path / "beam/det"),
        runner="beam",
        beam_options=TWO_WORKERS,
        **kwargs,
    )
    _same_set(str(tmp_path / "local/det"), str(tmp_path / "beam/det"))


def test_instances_equal_the_local_set(tmp_path):
    _instances_folder(tmp_path, n_images=5)
    args = (str(tmp_path / "images"), str(tmp_path / "masks"))
    kwargs = {"class_name": "pedestrian", "num_shards": 2, "progress": False}
    convert_instances(*args, str(tmp_path / "local/ped"), **kwargs)
    convert_instances(
        *args, str(tmp_path / "beam/ped"), runner="beam", beam_options=TWO_WORKERS, **kwargs
    )
    _same_set(str(tmp_path / "local/ped"), str(tmp_path / "beam/ped"))


def test_ram_file_system_inputs_and_outputs(tmp_path):
    """Inputs and outputs through tf.io.gfile: a `ram://` folder in, a `ram://` set out."""
    make_pairs_folder(tmp_path / "in", n=5)
    remote = "ram://beam_test/in"
    for sub in ("images", "masks"):
        tf.io.gfile.makedirs(f"{remote}/{sub}")
        for path in glob.glob(str(tmp_path / "in" / sub / "*")):
            tf.io.gfile.copy(path, f"{remote}/{sub}/{os.path.basename(path)}", overwrite=True)
    local = str(tmp_path / "local/set")
    convert_pairs(
        str(tmp_path / "in/images"),
        str(tmp_path / "in/masks"),
        local,
        classes="a,b,c",
        num_shards=2,
        progress=False,
    )
    convert_pairs(
        f"{remote}/images",
        f"{remote}/masks",
        "ram://beam_test/out/set",
        classes="a,b,c",
        num_shards=2,
        progress=False,
        runner="beam",
        beam_options=IN_PROCESS,
    )
    a, b = _files(local), _files("ram://beam_test/out/set")
    assert {k: v for k, v in a.items() if k.endswith(".tfrecord")} == {
        k: v for k, v in b.items() if k.endswith(".tfrecord")
    }
    manifest = json.loads(b["set.json"])
    assert manifest["shards"] == json.loads(a["set.json"])["shards"]
    assert tf.io.gfile.listdir("ram://beam_test/out") == sorted(b)  # nothing else left


def test_a_shard_written_twice_is_one_file_with_the_same_bytes(tmp_path):
    """A retried bundle rewrites its shard whole under the same name: no duplicated records."""
    records = [(2, b"two"), (0, b"zero"), (4, b"four")]
    first = write_shard((1, records), str(tmp_path), ["s0", "s1"])
    data = (tmp_path / "s1").read_bytes()
    second = write_shard((1, list(reversed(records))), str(tmp_path), ["s0", "s1"])
    assert first == second and (tmp_path / "s1").read_bytes() == data
    assert os.listdir(tmp_path) == ["s1"]
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "s1"))] == [
        b"zero",
        b"two",
        b"four",
    ]


def test_a_pipeline_that_dies_leaves_the_previous_set_and_a_rerun_completes(tmp_path):
    """A worker error that is not bad input (here an OSError on one item, once) fails the
    pipeline; the earlier set stays; running again writes the local path's bytes."""
    make_pairs_folder(tmp_path / "in", n=5)
    images, masks = str(tmp_path / "in/images"), str(tmp_path / "in/masks")
    output, marker = str(tmp_path / "out/set"), tmp_path / "failed_once"
    convert_pairs(images, masks, str(tmp_path / "local/set"), classes="a,b,c", progress=False)
    tf.io.gfile.makedirs(str(tmp_path / "out"))
    (tmp_path / "out/set-00000-of-00001.tfrecord").write_bytes(b"")
    (tmp_path / "out/set.json").write_text("{}")
    before = _files(output)

    from keras_dense.data import image_io

    real = image_io.read_bytes

    def flaky(path):
        if path.endswith("img02.png") and not marker.exists():
            marker.write_text("")
            raise OSError("connection reset")
        return real(path)

    image_io.read_bytes = flaky
    try:
        kwargs = {"classes": "a,b,c", "progress": False, "runner": "beam"}
        with pytest.raises(Exception, match="connection reset"):
            convert_pairs(images, masks, output, beam_options=IN_PROCESS, **kwargs)
        assert _files(output) == before and sorted(os.listdir(tmp_path / "out")) == sorted(before)
        convert_pairs(images, masks, output, beam_options=IN_PROCESS, **kwargs)
    finally:
        image_io.read_bytes = real
    _same_set(str(tmp_path / "local/set"), output)


def test_ranks_and_loads_match_the_local_order():
    assert record_ranks([(3, True), (0, True), (1, False), (2, True)]).tolist() == [0, 0, 1, 2]

    def make(item):
        raise BadInputError(item, "bad")

    assert load_item((5, "x.png"), make, str) == (5, {"data": None, "error": ["x.png", "bad"]})


def test_beam_options_are_checked():
    assert parse_beam_options(["--runner=DataflowRunner", "a=b=c"]) == {
        "runner": "DataflowRunner",
        "a": "b=c",
    }
    with pytest.raises(ValueError, match="expected KEY=VALUE"):
        parse_beam_options(["direct_num_workers"])


def test_voc_devkit_on_the_ram_file_system(tmp_path):
    """The VOC converter lists, reads and parses its inputs through tf.io.gfile too."""
    _devkit(tmp_path / "voc", np.random.default_rng(2), n=4)
    remote = "ram://beam_voc/voc"
    for path in glob.glob(str(tmp_path / "voc" / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            target = f"{remote}/{os.path.relpath(path, tmp_path / 'voc')}"
            tf.io.gfile.makedirs(os.path.dirname(target))
            tf.io.gfile.copy(path, target, overwrite=True)
    kwargs = {"task": "detection", "split": "train", "num_shards": 2, "progress": False}
    convert_voc(str(tmp_path / "voc"), str(tmp_path / "local/det"), **kwargs)
    convert_voc(remote, "ram://beam_voc/out/det", runner="beam", beam_options=IN_PROCESS, **kwargs)
    local, remote_files = _files(str(tmp_path / "local/det")), _files("ram://beam_voc/out/det")
    assert {k: v for k, v in local.items() if k.endswith(".tfrecord")} == {
        k: v for k, v in remote_files.items() if k.endswith(".tfrecord")
    }
    assert json.loads(remote_files["det.json"])["num_boxes"] == 4
