"""The image/mask pair converter, on generated folders and on the shared real data."""

from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from keras_dense.data import BadInputError, convert_pairs, read_examples
from keras_dense.data.masks import remap_lookup

from data_fixtures import make_pairs_folder


def test_masks_and_image_bytes_round_trip(tmp_path):
    masks = make_pairs_folder(tmp_path, n=6)
    manifest = convert_pairs(
        str(tmp_path / "images"),
        str(tmp_path / "masks"),
        str(tmp_path / "out" / "p"),
        classes="a,b,c",
        num_shards=2,
        progress=False,
    )
    assert manifest["num_images"] == 6 and manifest["skipped"] == []
    examples = {e["source_id"]: e for e in read_examples(str(tmp_path / "out" / "p-*"))}
    assert sorted(examples) == sorted(masks)
    for stem, mask in masks.items():
        np.testing.assert_array_equal(examples[stem]["mask"], mask)
    # JPEG/PNG bytes are stored untouched.
    raw = next(iter(tf.data.TFRecordDataset(str(tmp_path / "out" / "p-00000-of-00002.tfrecord"))))
    example = tf.train.Example.FromString(raw.numpy())
    stem = example.features.feature["image/source_id"].bytes_list.value[0].decode()
    name = [f for f in os.listdir(tmp_path / "images") if f.startswith(stem)][0]
    stored = example.features.feature["image/encoded"].bytes_list.value[0]
    assert stored == (tmp_path / "images" / name).read_bytes()


def test_remap_is_simultaneous_and_checked(tmp_path):
    masks = make_pairs_folder(tmp_path, n=3)
    convert_pairs(
        str(tmp_path / "images"),
        str(tmp_path / "masks"),
        str(tmp_path / "r"),
        classes="a,b",
        remap=["2:1", "1:0", "255:1"],
        progress=False,
    )
    table = remap_lookup({2: 1, 1: 0, 255: 1})
    for e in read_examples(str(tmp_path / "r-*")):
        np.testing.assert_array_equal(e["mask"], table[masks[e["source_id"]]])
    with pytest.raises(BadInputError, match=r"mask values \[2\]"):
        convert_pairs(
            str(tmp_path / "images"),
            str(tmp_path / "masks"),
            str(tmp_path / "x"),
            classes="a,b",
            progress=False,
        )


def test_split_file_and_suffix(tmp_path):
    masks = make_pairs_folder(tmp_path, n=4)
    for stem in masks:
        os.rename(tmp_path / "masks" / f"{stem}.png", tmp_path / "masks" / f"{stem}_m.png")
    split = tmp_path / "split.txt"
    split.write_text("img03 extra columns are ignored\nimg01\n")
    manifest = convert_pairs(
        str(tmp_path / "images"),
        str(tmp_path / "masks"),
        str(tmp_path / "s"),
        mask_suffix="_m",
        split_file=str(split),
        progress=False,
    )
    assert manifest["num_images"] == 2
    assert manifest["classes"] == ["class_0", "class_1", "class_2"]
    assert {e["source_id"] for e in read_examples(str(tmp_path / "s-*"))} == {"img01", "img03"}


def _reference_masks(folder, names, table):
    return {
        os.path.splitext(n)[0]: table[cv2.imread(os.path.join(folder, n), cv2.IMREAD_UNCHANGED)]
        for n in names
    }


def test_isbi_membrane_binarised(shared_datasets, tmp_path):
    root = shared_datasets / "isbi2012_membrane" / "train"
    manifest = convert_pairs(
        str(root / "image"),
        str(root / "label"),
        str(tmp_path / "isbi"),
        classes="membrane,interior",  # 0 (black) = membrane, 255 (white, most pixels) = cell
        remap=["255:1"],
        workers=2,
        progress=False,
    )
    names = sorted(os.listdir(root / "label"))
    assert manifest["num_images"] == len(names) == 30
    reference = _reference_masks(str(root / "label"), names, remap_lookup({255: 1}))
    for e in read_examples(str(tmp_path / "isbi-*")):
        np.testing.assert_array_equal(e["mask"], reference[e["source_id"]])
        assert e["image"].shape == (512, 512, 3)


def test_oxford_pets_trimaps(shared_datasets, tmp_path):
    root = shared_datasets / "oxford_pets_sample"
    split = root / "annotations" / "test.txt"
    manifest = convert_pairs(
        str(root / "images"),
        str(root / "annotations" / "trimaps"),
        str(tmp_path / "pets"),
        classes="background,pet",
        remap=["2:0", "3:255"],
        split_file=str(split),
        num_shards=2,
        workers=2,
        progress=False,
    )
    stems = [line.split()[0] for line in split.read_text().splitlines() if line.strip()]
    assert manifest["num_images"] + len(manifest["skipped"]) == len(set(stems))
    table = remap_lookup({2: 0, 3: 255})
    for e in read_examples(str(tmp_path / "pets-*")):
        source = cv2.imread(
            str(root / "annotations" / "trimaps" / f"{e['source_id']}.png"), cv2.IMREAD_UNCHANGED
        )
        np.testing.assert_array_equal(e["mask"], table[source])
        assert e["image"].shape[:2] == source.shape


def _trimap_folder(root, names):
    """Images and Oxford-Pet-style trimaps (1 pet, 2 background, 3 border)."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir()
    (root / "masks").mkdir()
    trimaps = {}
    for name in names:
        cv2.imwrite(str(root / "images" / f"{name}.png"), rng.integers(0, 255, (12, 10, 3)))
        trimap = rng.integers(1, 4, (12, 10)).astype(np.uint8)
        cv2.imwrite(str(root / "masks" / f"{name}.png"), trimap)
        trimaps[name] = trimap
    return trimaps


def test_class_from_prefix_labels_the_object_pixels_and_the_image(tmp_path):
    names = ["Bengal_1", "Bengal_2", "american_bulldog_10", "Abyssinian_3"]
    trimaps = _trimap_folder(tmp_path, names)
    manifest = convert_pairs(
        str(tmp_path / "images"),
        str(tmp_path / "masks"),
        str(tmp_path / "out" / "pets"),
        remap=["2:0", "3:255"],
        class_from_prefix=True,
        progress=False,
    )
    classes = ["background", "Abyssinian", "Bengal", "american_bulldog"]
    assert manifest["classes"] == classes
    assert manifest["arguments"]["class_from_prefix"] is True
    for example in read_examples(str(tmp_path / "out" / "pets-*")):
        stem = example["source_id"]
        class_id = classes.index(stem.rsplit("_", 1)[0])
        trimap = trimaps[stem]
        want = np.select([trimap == 1, trimap == 2], [class_id, 0], 255)
        np.testing.assert_array_equal(example["mask"], want)
        np.testing.assert_array_equal(example["image_labels"], [class_id])


def test_class_from_prefix_refuses_bad_input(tmp_path):
    _trimap_folder(tmp_path, ["Bengal_1", "nounderscore"])
    args = (str(tmp_path / "images"), str(tmp_path / "masks"), str(tmp_path / "o"))
    with pytest.raises(BadInputError, match="nounderscore.*no class prefix"):
        convert_pairs(*args, remap=["2:0", "3:255"], class_from_prefix=True, progress=False)
    os.remove(tmp_path / "images" / "nounderscore.png")
    with pytest.raises(BadInputError, match=r"Bengal_1.png.*binary mask.*\[2, 3\]"):
        convert_pairs(*args, class_from_prefix=True, progress=False)  # trimap not remapped
    with pytest.raises(ValueError, match="do not also give classes"):
        convert_pairs(*args, classes="a,b", class_from_prefix=True, progress=False)
