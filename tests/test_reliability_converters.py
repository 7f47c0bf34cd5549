"""Reliability of `convert instances --classes-file` and `convert folders` (issue 18).

Nothing the user wrote goes unused without a word: a classes-file line that matches no
instance is named (file and line) or, with `--on-error skip`, listed in the manifest; a file
under a class folder that is not converted is named or listed; two images of one stem in a
class folder are refused, as the pairs converter refuses them.
"""

from __future__ import annotations

import json
import os

import cv2
import numpy as np
import pytest

from keras_dense import cli
from keras_dense.data import BadInputError, convert_folders, convert_instances, read_examples

from data_fixtures import random_image, write_rgb

# ------------------------------------------------------------- convert instances --classes-file


@pytest.fixture
def instance_folder(tmp_path):
    """`images/{a,b}.png` with `masks/{a,b}_mask.png`: a has 2 instances, b has 1."""
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem, count in (("a", 2), ("b", 1)):
        write_rgb(tmp_path / "images" / f"{stem}.png", random_image(rng, 20, 24))
        ids = np.zeros((20, 24), np.uint8)
        for k in range(1, count + 1):
            ids[2 + 6 * (k - 1) : 6 + 6 * (k - 1), 3:9] = k
        assert cv2.imwrite(str(tmp_path / "masks" / f"{stem}_mask.png"), ids)
    return tmp_path


def _convert(root, text: str | bytes, **options):
    path = root / "classes.csv"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return convert_instances(
        str(root / "images"),
        str(root / "masks"),
        str(root / "out" / "inst"),
        classes_file=str(path),
        progress=False,
        **options,
    )


def _labels(root) -> dict[str, list[str]]:
    """Each record's box classes by name (labels are 1-based into the manifest's classes)."""
    classes = json.loads((root / "out" / "inst.json").read_text())["classes"]
    return {
        e["source_id"]: [classes[int(k) - 1] for k in e["labels"]]
        for e in read_examples(str(root / "out" / "inst-*.tfrecord"))
    }


@pytest.mark.parametrize(
    ("line", "why"),
    [
        (
            "aa,1,bicycle",
            r"line 2: 'aa,1,bicycle' matches no instance: no image with a mask has the stem 'aa'",
        ),
        ("b,2,bicycle", r"line 2: 'b,2,bicycle' matches no instance: b has 1 instance"),
        ("*,7,bicycle", r"line 2: '\*,7,bicycle' matches no instance: no image has 7 instances"),
        ("b,*,bicycle\nb,1,dog", r"line 2: 'b,\*,bicycle' matches no instance: every instance"),
    ],
)
def test_unused_classes_file_lines_are_named_then_listed(instance_folder, line, why):
    text = f"*,*,person\n{line}\n"
    with pytest.raises(BadInputError, match=r"classes\.csv " + why):
        _convert(instance_folder, text)
    assert not (instance_folder / "out" / "inst.json").exists()
    manifest = _convert(instance_folder, text, on_error="skip")
    unused = [s for s in manifest["skipped"] if "classes.csv line 2" in s["input"]]
    assert len(unused) == 1 and "matches no instance" in unused[0]["reason"]
    # A class that only unused lines name is not in the class list (it would have 0 boxes).
    assert "bicycle" not in manifest["classes"]
    labels = _labels(instance_folder)
    assert labels["a"] == ["person", "person"]


def test_a_bom_is_stripped(instance_folder):
    # Excel and Notepad write "utf-8-sig": the BOM would glue itself to the first stem.
    manifest = _convert(instance_folder, "a,2,bicycle\n*,*,person\n".encode("utf-8-sig"))
    assert manifest["classes"] == ["bicycle", "person"]
    assert _labels(instance_folder) == {"a": ["person", "bicycle"], "b": ["person"]}


@pytest.mark.parametrize(
    "text", ["*,*,background\n", "*,*,person\na,2,Background\n", "*,*,person\nb,*, background\n"]
)
def test_the_background_class_is_refused_naming_the_line(instance_folder, text):
    line = text.count("\n")
    with pytest.raises(BadInputError, match=rf"classes\.csv line {line}: .*background"):
        _convert(instance_folder, text)
    with pytest.raises(BadInputError, match="background"):
        _convert(instance_folder, text, on_error="skip")


def test_class_name_background_is_refused(instance_folder):
    with pytest.raises(ValueError, match="--class-name 'background'"):
        convert_instances(
            str(instance_folder / "images"),
            str(instance_folder / "masks"),
            str(instance_folder / "o"),
            class_name="background",
            progress=False,
        )


def test_invalid_utf8_names_the_file(instance_folder, capsys):
    (instance_folder / "classes.csv").write_bytes(b"*,*,person\na,1,caf\xe9\n")
    with pytest.raises(BadInputError, match=r"classes\.csv: not UTF-8 text .*line 2"):
        _convert(instance_folder, b"*,*,person\na,1,caf\xe9\n")
    args = ["convert", "instances", "--images", str(instance_folder / "images")]
    args += ["--masks", str(instance_folder / "masks"), "--output", str(instance_folder / "o")]
    assert cli.main([*args, "--classes-file", str(instance_folder / "classes.csv")]) == 2
    error = capsys.readouterr().err
    assert "classes.csv" in error and "UTF-8" in error and error.count("\n") == 1


def test_instance_id_zero_says_it_is_the_background(instance_folder):
    with pytest.raises(BadInputError, match=r"line 1: instance id 0 is the background"):
        _convert(instance_folder, "a,0,person\n*,*,person\n")


# ------------------------------------------------------------------------- convert folders


def _class_root(root, files: dict[str, tuple[int, int]]):
    rng = np.random.default_rng(1)
    for relative, (h, w) in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        write_rgb(path, random_image(rng, h, w))
    return root


def test_nested_folders_are_named_then_listed(tmp_path):
    root = _class_root(
        tmp_path / "root",
        {"cat/a.png": (16, 16), "cat/sub/x.png": (16, 20), "dog/b.png": (12, 16)},
    )
    out = str(tmp_path / "o" / "f")
    with pytest.raises(BadInputError, match=r"cat/sub: a folder inside the class folder 'cat'"):
        convert_folders(str(root), out, progress=False)
    manifest = convert_folders(str(root), out, on_error="skip", progress=False)
    assert manifest["num_images"] == 2
    [skip] = manifest["skipped"]
    assert skip["input"].endswith(os.path.join("cat", "sub"))
    assert "1 file" in skip["reason"] and "not converted" in skip["reason"]


def test_other_files_in_a_class_folder_are_named_then_listed(tmp_path):
    root = _class_root(tmp_path / "root", {"cat/a.png": (16, 16), "dog/b.png": (12, 16)})
    (root / "cat" / "c.gif").write_bytes(b"GIF89a")
    (root / "cat" / ".DS_Store").write_bytes(b"\0")  # hidden files are ignored, as by Keras
    out = str(tmp_path / "o" / "f")
    with pytest.raises(BadInputError, match=r"c\.gif: not an image file this converter reads"):
        convert_folders(str(root), out, progress=False)
    manifest = convert_folders(str(root), out, on_error="skip", progress=False)
    assert [os.path.basename(s["input"]) for s in manifest["skipped"]] == ["c.gif"]


def test_two_images_of_one_stem_are_refused(tmp_path):
    root = _class_root(
        tmp_path / "root", {"dog/a.png": (16, 16), "dog/a.jpg": (16, 16), "cat/a.png": (8, 8)}
    )
    for on_error in ("fail", "skip"):
        with pytest.raises(BadInputError, match=r"dog/a\.jpg and .*dog/a\.png share the stem 'a'"):
            convert_folders(str(root), str(tmp_path / "o"), on_error=on_error, progress=False)
    assert not (tmp_path / "o.json").exists()


def test_a_background_class_folder_is_refused(tmp_path):
    root = _class_root(tmp_path / "root", {"background/a.png": (8, 8), "cat/b.png": (8, 8)})
    code = cli.main(["convert", "folders", "--root", str(root), "--output", str(tmp_path / "o")])
    assert code == 2
    with pytest.raises(BadInputError, match=r"'background' is not a class"):
        convert_folders(str(root), str(tmp_path / "o"), on_error="skip", progress=False)


def test_manifest_counts_every_file_once(tmp_path):
    root = _class_root(
        tmp_path / "root", {"cat/a.png": (16, 16), "cat/b.jpg": (16, 16), "dog/a.png": (8, 8)}
    )
    manifest = convert_folders(str(root), str(tmp_path / "o"), progress=False)
    records = list(read_examples(str(tmp_path / "o-*.tfrecord")))
    ids = sorted(r["source_id"] for r in records)
    assert ids == ["cat/a", "cat/b", "dog/a"] and len(set(ids)) == len(records)
    assert json.loads((tmp_path / "o.json").read_text())["images_per_class"] == {"cat": 2, "dog": 1}
    assert manifest["skipped"] == []


# -------------------------------------------- one-name-per-line classes files and split files


@pytest.fixture
def pairs_folder(tmp_path):
    from data_fixtures import make_pairs_folder

    make_pairs_folder(tmp_path, n=3, num_classes=3, seed=2)
    return tmp_path


def test_a_bom_in_a_classes_file_does_not_rename_the_background(pairs_folder):
    from keras_dense.data import convert_pairs

    path = pairs_folder / "classes.txt"
    path.write_bytes("background\ncat\ndog\n".encode("utf-8-sig"))
    manifest = convert_pairs(
        str(pairs_folder / "images"),
        str(pairs_folder / "masks"),
        str(pairs_folder / "o"),
        classes_file=str(path),
        progress=False,
    )
    # "\ufeffbackground" would be read as an object class by detection and classification.
    assert manifest["classes"] == ["background", "cat", "dog"]
    path.write_bytes(b"background\ncaf\xe9\n")
    with pytest.raises(ValueError, match=r"classes\.txt: not UTF-8 text .*at line 2"):
        convert_pairs(
            str(pairs_folder / "images"),
            str(pairs_folder / "masks"),
            str(pairs_folder / "o2"),
            classes_file=str(path),
            progress=False,
        )


def test_a_bom_in_a_split_file_does_not_drop_its_first_stem(pairs_folder):
    from keras_dense.data import convert_pairs

    split = pairs_folder / "split.txt"
    split.write_bytes("img00\nimg01\n".encode("utf-8-sig"))
    manifest = convert_pairs(
        str(pairs_folder / "images"),
        str(pairs_folder / "masks"),
        str(pairs_folder / "o"),
        classes="a,b,c",
        split_file=str(split),
        progress=False,
    )
    assert manifest["num_images"] == 2 and manifest["skipped"] == []
