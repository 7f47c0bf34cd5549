"""`keras-dense convert` and the thin tfrecords/ scripts."""

from __future__ import annotations

import json
import subprocess
import sys

from keras_dense.cli import main
from keras_dense.data import read_examples

from data_fixtures import make_pairs_folder
from helpers import REPO_ROOT


def test_convert_pairs_command(tmp_path, capsys):
    masks = make_pairs_folder(tmp_path, n=4)
    status = main(
        [
            "convert",
            "pairs",
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--output",
            str(tmp_path / "o" / "p"),
            "--classes",
            "a,b,c",
            "--num-shards",
            "2",
            "--workers",
            "2",
        ]
    )
    out = capsys.readouterr().out
    assert status == 0 and "wrote 4 images to 2 shard(s)" in out
    manifest = json.loads((tmp_path / "o" / "p.json").read_text())
    assert manifest["arguments"]["classes"] == "a,b,c"
    assert {e["source_id"] for e in read_examples(str(tmp_path / "o" / "p-*"))} == set(masks)


def test_bad_input_exits_2_naming_the_file(tmp_path, capsys):
    make_pairs_folder(tmp_path, n=2)
    (tmp_path / "images" / "img00.png").write_bytes(b"garbage")
    status = main(
        [
            "convert",
            "pairs",
            "--images",
            str(tmp_path / "images"),
            "--masks",
            str(tmp_path / "masks"),
            "--output",
            str(tmp_path / "p"),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "img00.png" in err and "Traceback" not in err


def test_script_wrapper_runs_the_same_command(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO_ROOT / "tfrecords" / "convert_shapes.py"),
            "--output",
            str(tmp_path / "s"),
            "--num-images",
            "3",
            "--size",
            "32",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(list(read_examples(str(tmp_path / "s-*")))) == 3
