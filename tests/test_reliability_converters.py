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
    # The class list is the file's whatever the folder or split holds, so that every split
    # converted with one classes file has the same list (a class of unused lines: 0 boxes).
    named = [row.split(",")[2] for row in text.splitlines()]
    assert manifest["classes"] == list(dict.fromkeys(named))
    labels = _labels(instance_folder)
    assert labels["a"] == ["person", "person"]


@pytest.fixture
def split_folder(tmp_path):
    """`images/{t1,t2,v1}.png` with instance masks (t1: 2 instances, t2 and v1: 1 each), the
    split files `train.txt` (t1, t2) and `val.txt` (v1), and one classes file for both."""
    rng = np.random.default_rng(3)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem, count in (("t1", 2), ("t2", 1), ("v1", 1)):
        write_rgb(tmp_path / "images" / f"{stem}.png", random_image(rng, 20, 24))
        ids = np.zeros((20, 24), np.uint8)
        for k in range(1, count + 1):
            ids[2 + 6 * (k - 1) : 6 + 6 * (k - 1), 3:9] = k
        assert cv2.imwrite(str(tmp_path / "masks" / f"{stem}_mask.png"), ids)
    (tmp_path / "train.txt").write_text("t1\nt2\n")
    (tmp_path / "val.txt").write_text("v1\n")
    return tmp_path


SHARED_CLASSES = "*,*,person\nt1,2,bicycle\nt2,*,person\nv1,*,person\n"


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_one_classes_file_serves_every_split(split_folder, on_error):
    path = split_folder / "classes.csv"
    path.write_text(SHARED_CLASSES)
    manifests, labels = {}, {}
    for split in ("train", "val"):
        manifests[split] = convert_instances(
            str(split_folder / "images"),
            str(split_folder / "masks"),
            str(split_folder / "out" / split),
            classes_file=str(path),
            split_file=str(split_folder / f"{split}.txt"),
            on_error=on_error,
            progress=False,
        )
        classes = manifests[split]["classes"]
        for e in read_examples(str(split_folder / "out" / f"{split}-*.tfrecord")):
            labels[e["source_id"]] = [classes[int(k) - 1] for k in e["labels"]]
    # A line for another split's image is not unused, and val (without bicycles) keeps the
    # class: both splits have the file's class list, so one model trains on both.
    assert manifests["train"]["classes"] == manifests["val"]["classes"] == ["person", "bicycle"]
    assert labels == {"t1": ["person", "bicycle"], "t2": ["person"], "v1": ["person"]}
    assert manifests["train"]["skipped"] == manifests["val"]["skipped"] == []


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("v2,*,dog", r"line 5: 'v2,\*,dog' matches no instance: no image with a mask has the stem"),
        # v1 is outside the train split, but its mask has 1 instance.
        ("v1,3,dog", r"line 5: 'v1,3,dog' matches no instance: v1 has 1 instance"),
    ],
)
def test_a_split_still_names_lines_that_match_nothing_in_the_folder(split_folder, line, why):
    path = split_folder / "classes.csv"
    path.write_text(SHARED_CLASSES + line + "\n")
    options = dict(split_file=str(split_folder / "train.txt"), progress=False)
    args = (str(split_folder / "images"), str(split_folder / "masks"), str(split_folder / "o"))
    with pytest.raises(BadInputError, match=r"classes\.csv " + why):
        convert_instances(*args, classes_file=str(path), **options)
    manifest = convert_instances(*args, classes_file=str(path), on_error="skip", **options)
    assert [s["input"] for s in manifest["skipped"]] == [f"{path} line 5"]
    assert manifest["classes"] == ["person", "bicycle", "dog"]


def test_the_classes_file_check_reads_each_mask_once(split_folder, monkeypatch):
    from keras_dense.data.converters import instances

    reads: list[str] = []
    original = instances.read_mask_file

    def counting(path):
        reads.append(os.path.basename(path))
        return original(path)

    monkeypatch.setattr(instances, "read_mask_file", counting)
    (split_folder / "classes.csv").write_text(SHARED_CLASSES)
    convert_instances(
        str(split_folder / "images"),
        str(split_folder / "masks"),
        str(split_folder / "o"),
        classes_file=str(split_folder / "classes.csv"),
        progress=False,
    )
    assert sorted(reads) == ["t1_mask.png", "t2_mask.png", "v1_mask.png"]


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


def test_os_metadata_files_and_folders_are_ignored(tmp_path, capsys):
    # What Windows Explorer, macOS Finder / Archive Utility and NAS indexers leave behind.
    root = _class_root(
        tmp_path / "root",
        {"cat/a.png": (16, 16), "cat/b.png": (16, 16), "dog/c.png": (12, 16), "dog/d.png": (8, 8)},
    )
    for junk in ("cat/Thumbs.db", "cat/desktop.ini", "dog/ehthumbs.db", "dog/Icon\r"):
        (root / junk).write_bytes(b"\0\1")
    for folder in ("__MACOSX/cat", "cat/@eaDir/a.png", "dog/__MACOSX"):
        (root / folder).mkdir(parents=True)
    (root / "__MACOSX" / "cat" / "._a.png").write_bytes(b"\0\5\26\7")
    (root / "cat" / "@eaDir" / "a.png" / "SYNOFILE_THUMB_S.jpg").write_bytes(b"\xff\xd8")
    out = tmp_path / "o" / "f"
    assert cli.main(["convert", "folders", "--root", str(root), "--output", str(out)]) == 0
    manifest = json.loads((tmp_path / "o" / "f.json").read_text())
    assert manifest["classes"] == ["cat", "dog"] and manifest["skipped"] == []
    assert manifest["num_images"] == 4
    # Other files are still named.
    (root / "cat" / "notes.txt").write_text("x")
    with pytest.raises(BadInputError, match=r"cat/notes\.txt: not an image file"):
        convert_folders(str(root), str(out), progress=False)


def test_two_images_of_one_stem_are_refused(tmp_path):
    root = _class_root(
        tmp_path / "root", {"dog/a.png": (16, 16), "dog/a.jpg": (16, 16), "cat/a.png": (8, 8)}
    )
    for on_error in ("fail", "skip"):
        with pytest.raises(BadInputError, match=r"dog/a\.jpg and .*dog/a\.png share the stem 'a'"):
            convert_folders(str(root), str(tmp_path / "o"), on_error=on_error, progress=False)
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("folders", [("background", "person"), ("airplane", "Background")])
def test_a_background_class_folder_is_refused_with_the_way_out(tmp_path, capsys, folders):
    # The classifier reads a class list starting with "background" as a segmentation list and
    # drops it (`object_classes`): background/ + person/ would become one class, "person", with
    # the background images as its positives. Wherever it sorts, pseudo-label masks would name
    # id 0 and the folder's class both "background".
    root = _class_root(tmp_path / "root", {f"{f}/{i}.png": (8, 8) for i, f in enumerate(folders)})
    [background] = [f for f in folders if f.lower() == "background"]
    [other] = [f for f in folders if f != background]
    code = cli.main(["convert", "folders", "--root", str(root), "--output", str(tmp_path / "o")])
    assert code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and os.path.join(str(root), background) in error
    # The way out: rename it to keep its images as a class, or move it out of --root.
    assert "rename the folder" in error and "'no_object'" in error and "move it out" in error
    with pytest.raises(BadInputError, match=r"'background'"):
        convert_folders(str(root), str(tmp_path / "o"), on_error="skip", progress=False)
    os.rename(root / background, root / "no_object")
    manifest = convert_folders(str(root), str(tmp_path / "o"), progress=False)
    assert manifest["classes"] == sorted(["no_object", other])


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
