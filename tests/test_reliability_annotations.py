"""Reliability of the converters on annotation files written by other tools (issue 18).

VOC XML as LabelImg, CVAT (Datumaro) and Roboflow write it, COCO JSON as Roboflow and CVAT
export it, and masks as image editors save them. Every fixture is written by hand here, byte
by byte where the format matters (PNG bit depths, EXIF orientation), never by our converters.
Each case either converts to what an independent reading of the file gives, or stops with a
message naming the file, the record or annotation and the field (`--on-error skip` lists it).
"""

from __future__ import annotations

import json
import os
import re
import struct
import warnings

import cv2
import numpy as np
import pytest

from keras_dense import cli
from keras_dense.data import (
    BadInputError,
    convert_coco,
    convert_instances,
    convert_pairs,
    convert_shapes,
    convert_voc,
    read_examples,
)

from data_fixtures import grey_png_bytes

H, W = 30, 40  # every image here is 40 wide, 30 high


def _examples(pattern: str) -> dict[str, dict]:
    return {e["source_id"]: e for e in read_examples(pattern)}


def _write_image(path, h: int = H, w: int = W, value: int = 120) -> None:
    assert cv2.imwrite(str(path), np.full((h, w, 3), value, np.uint8))


def _exif_jpeg(path, h: int, w: int, orientation: int) -> None:
    """A JPEG of h x w stored pixels with an EXIF orientation tag, as phone cameras write."""
    ok, buf = cv2.imencode(".jpg", np.full((h, w, 3), 90, np.uint8))
    assert ok
    ifd = struct.pack("<H", 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0)
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])


# ------------------------------------------------------------------------------------ VOC XML


def _voc_object(name="cat", box=(2, 3, 10, 12), extra="") -> str:
    x0, y0, x1, y1 = box
    return (
        f"<object><name>{name}</name>{extra}<bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def _voc_xml(objects: str, filename="a.jpg", size=(W, H)) -> str:
    """An annotation laid out as LabelImg writes it."""
    size_xml = (
        f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"
        if size
        else ""
    )
    return (
        f"<annotation><folder>JPEGImages</folder><filename>{filename}</filename>"
        f"<path>/home/user/data/{filename}</path><source><database>Unknown</database></source>"
        f"{size_xml}<segmented>0</segmented>{objects}</annotation>"
    )


def _voc_root(tmp_path, xmls: dict[str, str], images=("a.jpg",)):
    root = tmp_path / "voc"
    (root / "JPEGImages").mkdir(parents=True)
    (root / "Annotations").mkdir()
    for name in images:
        _write_image(root / "JPEGImages" / name)
    for stem, text in xmls.items():
        (root / "Annotations" / f"{stem}.xml").write_text(text)
    return root


def _voc(root, tmp_path, **options):
    return convert_voc(
        str(root), str(tmp_path / "out" / "v"), task="detection", progress=False, **options
    )


@pytest.mark.parametrize("bad", ["nan", "NaN", "-inf"])
def test_voc_non_finite_coordinate_is_named(tmp_path, bad):
    # float("nan") parses, and every comparison with it is False: the box passed all checks.
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object(box=(bad, 3, 10, 12)))})
    why = r"a\.xml: object #0 \(cat\): <xmin> is '.*', expected a finite number"
    with pytest.raises(BadInputError, match=why):
        _voc(root, tmp_path)


def test_voc_inverted_box_is_called_inverted(tmp_path):
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object(box=(20, 3, 10, 12)))})
    with pytest.raises(BadInputError, match=r"object #0 \(cat\): inverted box.*xmax 10 < xmin 20"):
        _voc(root, tmp_path)


@pytest.mark.parametrize(
    ("text", "flag"),
    [
        ("<difficult>1</difficult>", True),
        ("<difficult>1.0</difficult>", True),
        ("<difficult>true</difficult>", True),
        ("<difficult>0</difficult>", False),
        ("<difficult>Unspecified</difficult>", False),
        ("<difficult></difficult>", False),
        ("", False),
    ],
)
def test_voc_difficult_flags_as_tools_write_them(tmp_path, text, flag):
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object(extra=text))})
    _voc(root, tmp_path)
    example = _examples(str(tmp_path / "out" / "v-*"))["a"]
    np.testing.assert_array_equal(example["difficult"], [flag])


def test_voc_unreadable_difficult_flag_is_named(tmp_path):
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object(extra="<difficult>2</difficult>"))})
    with pytest.raises(BadInputError, match=r"a\.xml: object #0 \(cat\): <difficult> is '2'"):
        _voc(root, tmp_path)


def test_voc_two_annotations_of_one_image_are_refused(tmp_path):
    # A copy of a.xml saved as a2.xml (its <filename> still a.jpg): one image, two records.
    root = _voc_root(
        tmp_path,
        {"a": _voc_xml(_voc_object()), "a2": _voc_xml(_voc_object(name="dog"))},
    )
    with pytest.raises(BadInputError, match=r"a2?\.xml: it and .*a2?\.xml both annotate .*a\.jpg"):
        _voc(root, tmp_path)
    (root / "JPEGImages" / "b.jpg").write_bytes((root / "JPEGImages" / "a.jpg").read_bytes())
    (root / "Annotations" / "b.xml").write_text(_voc_xml(_voc_object(), filename="b.jpg"))
    manifest = _voc(root, tmp_path, on_error="skip")
    assert set(_examples(str(tmp_path / "out" / "v-*"))) == {"b"}
    named = sorted(os.path.basename(s["input"]) for s in manifest["skipped"])
    assert named == ["a.xml", "a2.xml"]


def test_voc_filename_naming_another_existing_image_is_refused(tmp_path):
    # a.xml says b.png while JPEGImages holds a.jpg too: which image was annotated is a guess.
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object(), filename="b.png")}, ("a.jpg", "b.png"))
    with pytest.raises(BadInputError, match=r"a\.xml: <filename> names .*b\.png.*a\.jpg"):
        _voc(root, tmp_path)


def test_voc_image_of_another_extension_is_found(tmp_path):
    # CVAT keeps the images' own extensions; without a usable <filename>, STEM.* is looked up.
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object(), filename="")}, ("a.png",))
    _voc(root, tmp_path)
    assert set(_examples(str(tmp_path / "out" / "v-*"))) == {"a"}
    _write_image(root / "JPEGImages" / "a.jpeg")
    with pytest.raises(BadInputError, match=r"a\.xml: .*a\.jpeg.*a\.png"):
        _voc(root, tmp_path)


def test_voc_class_names_differing_only_in_case_are_refused(tmp_path):
    xmls = {
        "a": _voc_xml(_voc_object(name="RBC")),
        "b": _voc_xml(_voc_object(name="rbc "), filename="b.jpg"),
    }
    root = _voc_root(tmp_path, xmls, ("a.jpg", "b.jpg"))
    with pytest.raises(BadInputError, match=r"'RBC' .* and 'rbc' .*differ only in case"):
        _voc(root, tmp_path)
    with pytest.raises(
        BadInputError, match=r"class 'rbc' is not in the class list.*case-sensitive.*'RBC'"
    ):
        _voc(root, tmp_path, classes="RBC")


def test_voc_xml_of_another_layout_is_refused(tmp_path):
    # CVAT's "for images" export is one XML of <image> elements: no <object> at all.
    text = '<annotations><image id="0" name="a.jpg" width="40" height="30"><box label="cat" '
    text += 'xtl="1" ytl="2" xbr="9" ybr="9"/></image></annotations>'
    root = _voc_root(tmp_path, {"a": text})
    with pytest.raises(BadInputError, match=r"a\.xml: the root element is <annotations>"):
        _voc(root, tmp_path)


def test_voc_latin1_xml_without_declaration_is_named_as_such(tmp_path):
    # Windows tools save ANSI text; the parser's own word is "not well-formed (invalid token)".
    root = _voc_root(tmp_path, {})
    text = _voc_xml(_voc_object(name="caf\u00e9"))
    (root / "Annotations" / "a.xml").write_bytes(text.encode("latin-1"))
    with pytest.raises(BadInputError, match=r"a\.xml: .*not UTF-8: byte 0xe9 at line 1"):
        _voc(root, tmp_path)
    declared = '<?xml version="1.0" encoding="ISO-8859-1"?>' + text
    (root / "Annotations" / "a.xml").write_bytes(declared.encode("latin-1"))
    assert _voc(root, tmp_path, classes="caf\u00e9")["num_boxes"] == 1


def test_voc_size_that_is_not_a_whole_number_is_named(tmp_path):
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object(), size=("40.7", H))})
    with pytest.raises(BadInputError, match=r"a\.xml: <size>: <width> is '40.7'"):
        _voc(root, tmp_path)


def test_voc_annotation_of_the_stored_pixels_of_a_rotated_photo_is_explained(tmp_path):
    # LabelImg ignores EXIF: <size> is the stored 40x30 of a photo displayed (and converted)
    # upright as 30x40.
    root = _voc_root(tmp_path, {"a": _voc_xml(_voc_object())}, ())
    _exif_jpeg(root / "JPEGImages" / "a.jpg", H, W, orientation=6)
    with pytest.raises(BadInputError, match=r"a\.xml: <size> says 40x30.*EXIF orientation 6"):
        _voc(root, tmp_path)
    (root / "Annotations" / "a.xml").write_text(_voc_xml(_voc_object(), size=(H, W)))
    manifest = _voc(root, tmp_path)
    assert manifest["exif_reoriented"] == [{"input": "a", "orientation": 6}]


def test_voc_zero_based_coordinates(tmp_path):
    # CVAT (Datumaro) writes continuous 0-based corners: a full-image box is 0 0 40 30.
    objects = _voc_object(box=("0.0", "0.0", "40.0", "30.0")) + _voc_object(box=(10, 5, 20, 15))
    root = _voc_root(tmp_path, {"a": _voc_xml(objects)})
    with pytest.raises(BadInputError, match=r"xmin=0.*1-based.*--coordinates zero-based"):
        _voc(root, tmp_path)
    manifest = _voc(root, tmp_path, coordinates="zero-based")
    assert manifest["arguments"]["coordinates"] == "zero-based"
    boxes = _examples(str(tmp_path / "out" / "v-*"))["a"]["boxes"]
    np.testing.assert_allclose(boxes, [[0, 0, 1, 1], [5 / H, 10 / W, 15 / H, 20 / W]], atol=1e-6)
    # The 1-based reading of the same second box, for contrast: one pixel more on the left/top.
    manifest = _voc(
        _voc_root(tmp_path / "one", {"a": _voc_xml(_voc_object(box=(10, 5, 20, 15)))}),
        tmp_path,
    )
    boxes = _examples(str(tmp_path / "out" / "v-*"))["a"]["boxes"]
    np.testing.assert_allclose(boxes, [[4 / H, 9 / W, 15 / H, 20 / W]], atol=1e-6)
    with pytest.raises(BadInputError, match=r"xmax=41.*outside the 40x30 image"):
        _voc(
            _voc_root(tmp_path / "two", {"a": _voc_xml(_voc_object(box=(0, 0, 41, 30)))}),
            tmp_path,
            coordinates="zero-based",
        )
    with pytest.raises(ValueError, match="coordinates='0'"):
        _voc(root, tmp_path, coordinates="0")
    with pytest.raises(ValueError, match="applies to boxes"):
        convert_voc(str(root), str(tmp_path / "s"), task="segmentation", coordinates="zero-based")


def test_cli_voc_coordinates_and_workers(tmp_path, capsys):
    objects = _voc_object(box=("0.0", "0.0", "40.0", "30.0"))
    root = _voc_root(tmp_path, {"a": _voc_xml(objects)})
    args = ["convert", "voc", "--root", str(root), "--task", "detection"]
    args += ["--output", str(tmp_path / "out" / "v")]
    assert cli.main([*args, "--coordinates", "zero-based"]) == 0
    with pytest.raises(SystemExit) as info:
        cli.main([*args, "--workers", "0"])
    assert info.value.code == 2 and "--workers" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- COCO JSON


def _coco_data() -> dict:
    """Two images, one box with a polygon each, laid out as CVAT exports COCO."""
    poly_a = [[2.0, 3.0, 12.0, 3.0, 12.0, 11.0, 2.0, 11.0]]
    poly_b = [[5.0, 5.0, 15.0, 5.0, 15.0, 15.0, 5.0, 15.0]]
    return {
        "info": {"description": "export"},
        "licenses": [],
        "categories": [
            {"id": 1, "name": "cat", "supercategory": ""},
            {"id": 2, "name": "dog", "supercategory": ""},
        ],
        "images": [
            {"id": 1, "file_name": "a.jpg", "width": W, "height": H},
            {"id": 2, "file_name": "b.jpg", "width": W, "height": H},
        ],
        "annotations": [
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "bbox": [2.0, 3.0, 10.0, 8.0],
                "segmentation": poly_a,
                "area": 80.0,
                "iscrowd": 0,
            },
            {
                "id": 12,
                "image_id": 2,
                "category_id": 2,
                "bbox": [5.0, 5.0, 10.0, 10.0],
                "segmentation": poly_b,
                "area": 100.0,
                "iscrowd": 0,
            },
        ],
    }


def _coco(tmp_path, data, files=("a.jpg", "b.jpg"), **options):
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    for name in files:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        _write_image(images / name)
    path = tmp_path / "instances.json"
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data))
    return convert_coco(
        str(path), str(images), str(tmp_path / "out" / "c"), progress=False, **options
    )


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("[]", r"the top level is a list, expected an object"),
        ('{"images": [], "annotations": []}', r"no 'categories' list"),
        ('{"images": {}, "annotations": [], "categories": []}', r"'images' is a dict"),
        ('{"images": [], "annotations": []', r"not JSON"),
    ],
)
def test_coco_file_structure_is_named(tmp_path, text, why):
    with pytest.raises(BadInputError, match=r"instances\.json: .*" + why):
        _coco(tmp_path, text)


def test_coco_byte_order_mark_is_accepted(tmp_path):
    data = b"\xef\xbb\xbf" + json.dumps(_coco_data()).encode()
    assert _coco(tmp_path, data)["num_images"] == 2


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (
            lambda d: d["images"].append({"id": 1, "file_name": "c.jpg"}),
            r"images\[2\]: image id 1 is also images\[0\]'s",
        ),
        (
            lambda d: d["annotations"][1].update(id=11),
            r"annotations\[1\]: annotation id 11 is also annotations\[0\]'s",
        ),
        (
            lambda d: d["categories"].append({"id": 2, "name": "bird"}),
            r"categories\[2\]: category id 2 is also categories\[1\]'s",
        ),
        (
            lambda d: d["categories"].append({"id": 3, "name": "cat"}),
            r"categories\[2\]: category name 'cat' is also categories\[0\]'s",
        ),
        (lambda d: d["categories"][0].update(name=" "), r"categories\[0\]: field 'name' is ' '"),
        (lambda d: d["categories"][0].pop("name"), r"categories\[0\]: field 'name' is None"),
        (
            lambda d: d["images"][1].update(file_name="./a.jpg"),
            r"images\[1\]: file 'a.jpg' is also images\[0\]'s",
        ),
        (
            lambda d: d["images"][1].update(id="2"),
            r"images\[1\]: image id '2' is a str while images\[0\]'s is an int",
        ),
        (lambda d: d["annotations"][0].pop("image_id"), r"annotation 11: no field 'image_id'"),
    ],
)
def test_coco_ambiguous_ids_and_names_are_refused(tmp_path, change, why):
    # pycocotools' index kept the last of two equal ids: an image, annotation or class silently
    # replaced another (a.jpg's cat boxed on b.jpg, dog boxes labelled bird).
    data = _coco_data()
    change(data)
    with pytest.raises(BadInputError, match=r"instances\.json " + why):
        _coco(tmp_path, data)
    assert not (tmp_path / "out").exists()


def test_coco_string_image_ids_work(tmp_path):
    data = _coco_data()
    for entry, key in ((data["images"][0], "id"), (data["images"][1], "id")):
        entry[key] = f"img-{entry[key]}"
    data["annotations"][0]["image_id"] = "img-1"
    data["annotations"][1]["image_id"] = "img-2"
    assert _coco(tmp_path, data)["num_boxes"] == 2


def test_coco_annotation_of_an_unlisted_image_is_named(tmp_path):
    data = _coco_data()
    data["annotations"][1]["image_id"] = "2"  # a string id where the images' ids are integers
    with pytest.raises(BadInputError, match=r"annotation 12: field 'image_id' is '2', which no"):
        _coco(tmp_path, data)
    manifest = _coco(tmp_path, data, on_error="skip")
    inputs = [s["input"] for s in manifest["skipped"]]
    assert any("annotation 12" in s for s in inputs) and any("b.jpg" in s for s in inputs)


def test_coco_same_stem_in_two_folders_gets_two_source_ids(tmp_path):
    # CVAT exports several tasks as task_1/frame_000000.jpg, task_2/frame_000000.jpg.
    data = _coco_data()
    data["images"][0]["file_name"] = "task_1/frame_000000.jpg"
    data["images"][1]["file_name"] = "task_2/frame_000000.jpg"
    _coco(tmp_path, data, files=("task_1/frame_000000.jpg", "task_2/frame_000000.jpg"))
    examples = _examples(str(tmp_path / "out" / "c-*"))
    assert set(examples) == {"task_1/frame_000000", "task_2/frame_000000"}
    np.testing.assert_array_equal(examples["task_2/frame_000000"]["labels"], [2])


def test_coco_same_stem_in_one_folder_is_refused(tmp_path):
    data = _coco_data()
    data["images"][1]["file_name"] = "a.png"
    with pytest.raises(BadInputError, match=r"images\[1\]: .*'a.png' and 'a.jpg' share the"):
        _coco(tmp_path, data, files=("a.jpg", "a.png"))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda d: d["images"][0].update(width="40"), r"field 'width' is '40': expected"),
        (lambda d: d["images"][0].update(width=40.5), r"field 'width' is 40.5: expected"),
        (lambda d: d["annotations"][0].update(iscrowd="yes"), r"field 'iscrowd' is 'yes'"),
        (lambda d: d["annotations"][0].update(bbox=[12, 3, -10, 8]), r"negative width -10"),
    ],
)
def test_coco_bad_fields_are_named(tmp_path, change, why):
    data = _coco_data()
    change(data)
    with pytest.raises(BadInputError, match=r"(instances\.json|a\.jpg).*" + why):
        _coco(tmp_path, data)
    manifest = _coco(tmp_path, data, on_error="skip")
    assert len(manifest["skipped"]) == 1 and manifest["num_boxes"] >= 1


def test_coco_box_only_export_with_empty_segmentations(tmp_path):
    # Roboflow and CVAT write "segmentation": [] for boxes: no masks, every box kept.
    data = _coco_data()
    for ann in data["annotations"]:
        ann["segmentation"] = []
    manifest = _coco(tmp_path, data)
    assert manifest["instance_masks"] is False and manifest["num_boxes"] == 2
    example = _examples(str(tmp_path / "out" / "c-*"))["a"]
    np.testing.assert_allclose(example["boxes"], [[3 / H, 2 / W, 11 / H, 12 / W]], atol=1e-6)


def test_coco_box_without_segmentation_among_polygons_names_the_way_out(tmp_path):
    data = _coco_data()
    data["annotations"][1]["segmentation"] = []
    why = r"annotation 12 .*no segmentation.*--no-instance-masks"
    with pytest.raises(BadInputError, match=why):
        _coco(tmp_path, data)
    assert _coco(tmp_path, data, instance_masks=False)["num_boxes"] == 2


@pytest.mark.parametrize(
    ("segmentation", "why"),
    [
        ([[2, 3, 12, 3, 12, 11, 2]], r"polygon 0 has 7 numbers: expected x, y pairs"),
        ([[2, 3, 12, 11]], r"polygon 0 has 2 points: expected at least 3"),
        ([2, 3, 12, 3, 12, 11, 2, 11], r"expected a list of polygons"),
        ([[2, 3, 12, float("nan"), 12, 11, 2, 11]], r"polygon 0 has a non-finite coordinate"),
        ([[2, 3, 1e9, 3, 12, 11, 2, 11]], r"polygon 0 has x = 1e\+09, outside the 40x30 image"),
        ([[20, 20, 30, 20, 30, 28, 20, 28]], r"lie outside its bbox"),
        ([[2, 3, 2, 3, 2, 3]], r"covers no pixel"),
        ({"size": [H, W], "counts": [5, 5]}, r"RLE counts add up to 10 pixels, the image has 1200"),
        ({"size": [H, W], "counts": "0"}, r"RLE counts add up to 0 pixels, the image has 1200"),
    ],
)
def test_coco_bad_segmentations_are_named(tmp_path, segmentation, why):
    # Before: a NaN or huge vertex crashed pycocotools (segmentation fault or memory), an odd
    # count or wrong RLE sum gave a silently wrong (even random) mask, a misplaced polygon a
    # mask outside its box.
    data = _coco_data()
    data["annotations"][0]["segmentation"] = segmentation
    with pytest.raises(BadInputError, match=r"annotation 11 \(image 1\): .*" + why):
        _coco(tmp_path, data)


def _inside_by_pixel_centre(polygon) -> np.ndarray:
    """(H, W) pixels whose centre lies inside `polygon` (even-odd rule), in NumPy."""
    corners = np.asarray(polygon, np.float64).reshape(-1, 2)
    ys, xs = np.mgrid[0:H, 0:W] + 0.5
    inside = np.zeros((H, W), bool)
    for (x1, y1), (x2, y2) in zip(corners, np.roll(corners, -1, axis=0)):
        if y1 != y2:
            inside ^= ((y1 > ys) != (y2 > ys)) & (xs < (x2 - x1) * (ys - y1) / (y2 - y1) + x1)
    return inside


@pytest.mark.parametrize(
    ("polygon", "bbox", "clipped"),
    [
        # A vertex dragged 6 px past the right edge (CVAT, LabelMe); Roboflow clips the bbox.
        ([20, 5, 46, 5, 40, 20], [20, 5, 20, 15], [20, 5, 40, 5, 40, 20]),
        # Past the top-left corner; the bbox is the polygon's (CVAT), negative x and y.
        ([-3, -2, 8, -2, 8, 9, -3, 9], [-3, -2, 11, 11], [0, 0, 8, 0, 8, 9, 0, 9]),
        # 15 px past the bottom of the 30-px-high image: half its height, the most clipped.
        ([4, 20, 14, 20, 14, 45, 4, 45], [4, 20, 10, 25], [4, 20, 14, 20, 14, 30, 4, 30]),
    ],
)
def test_coco_polygon_slightly_outside_the_image_is_clipped(tmp_path, polygon, bbox, clipped):
    # Refused ("outside the 40x30 image") once vertices were checked; clipped before.
    data = _coco_data()
    data["annotations"][0].update(segmentation=[polygon], bbox=bbox)
    manifest = _coco(tmp_path, data, semantic_masks=True)
    assert manifest["num_boxes"] == 2 and not manifest["skipped"]
    example = _examples(str(tmp_path / "out" / "c-*"))["a"]
    truth = _inside_by_pixel_centre(clipped)
    np.testing.assert_array_equal(example["instance_masks"][0], truth)
    np.testing.assert_array_equal(example["mask"], truth.astype(np.uint8))  # cat = label 1
    x0, y0 = max(bbox[0], 0), max(bbox[1], 0)
    x1, y1 = min(bbox[0] + bbox[2], W), min(bbox[1] + bbox[3], H)
    np.testing.assert_allclose(example["boxes"], [[y0 / H, x0 / W, y1 / H, x1 / W]], atol=1e-6)


@pytest.mark.parametrize(
    ("near", "far", "why"),
    [
        # 20 px (half the width) past the right edge is clipped, 21 px refused.
        (([2, 3, 60, 3, 12, 11], [2, 3, 58, 8]), ([2, 3, 61, 3, 12, 11], None), "x = 61"),
        # 15 px (half the height) above the top is clipped, 16 px refused.
        (([2, -15, 12, 3, 12, 11], [2, -15, 10, 26]), ([2, -16, 12, 3, 12, 11], None), "y = -16"),
        # A box (box exports, polygons within it) 20 px left of the image, 21 px or 1e9 wide.
        (([2, 3, 12, 3, 12, 11], [-20, 3, 32, 8]), ([2, 3, 12, 3, 12, 11], [-21, 3, 33, 8]), ""),
        (([2, 3, 12, 3, 12, 11], [2, 3, 58, 8]), ([2, 3, 12, 3, 12, 11], [2, 3, 1e9, 8]), ""),
        # A box reaching 2 px into the margin is clipped; one wholly in the margin refused.
        (([38, 3, 42, 3, 42, 11], [38, 3, 4, 8]), ([41, 3, 45, 3, 45, 11], [41, 3, 4, 8]), ""),
    ],
)
def test_coco_vertices_and_boxes_far_outside_the_image_are_refused(tmp_path, near, far, why):
    # NaN and 1e9 vertices (which crashed pycocotools) are in test_coco_bad_segmentations...
    data = _coco_data()
    data["annotations"][0].update(segmentation=[near[0]], bbox=near[1])
    assert _coco(tmp_path, data)["num_boxes"] == 2
    polygon, bbox = far
    data["annotations"][0].update(segmentation=[polygon], bbox=bbox or near[1])
    what = f"polygon 0 has {why}," if why else rf"box {re.escape(str(bbox))} \(x,y,w,h\) .*"
    with pytest.raises(BadInputError, match=rf"annotation 11 \(image 1\): .*{what} outside the"):
        _coco(tmp_path, data)


def test_coco_compressed_rle_of_the_right_length_is_kept(tmp_path):
    from pycocotools import mask as mask_utils

    truth = np.zeros((H, W), np.uint8)
    truth[3:11, 2:12] = 1
    rle = mask_utils.encode(np.asfortranarray(truth))
    data = _coco_data()
    data["annotations"][0].update(
        iscrowd=1, segmentation={"size": [H, W], "counts": rle["counts"].decode()}
    )
    _coco(tmp_path, data)
    example = _examples(str(tmp_path / "out" / "c-*"))["a"]
    np.testing.assert_array_equal(example["instance_masks"][0], truth)
    np.testing.assert_array_equal(example["is_crowd"], [True])


def test_coco_semantic_masks_refuse_labels_beyond_the_ignore_label(tmp_path):
    # uint8 masks: label 256 wrapped to 0, label 255 became the ignore label.
    data = _coco_data()
    data["categories"] = [{"id": i, "name": f"c{i}"} for i in range(1, 256)]
    with pytest.raises(ValueError, match=r"255 categories.*ignore label 255"):
        _coco(tmp_path, data, semantic_masks=True)
    with pytest.raises(ValueError, match=r"ignore_label=300"):
        _coco(tmp_path, _coco_data(), semantic_masks=True, ignore_label=300)


def test_coco_roboflow_super_category_is_left_out(tmp_path):
    # Roboflow exports the project's super-category as category 0, used by no annotation.
    data = _coco_data()
    data["categories"] = [
        {"id": 0, "name": "animals", "supercategory": "none"},
        {"id": 1, "name": "cat", "supercategory": "animals"},
        {"id": 2, "name": "dog", "supercategory": "animals"},
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = _coco(tmp_path, data)
    assert manifest["classes"] == ["cat", "dog"] and manifest["coco_category_ids"] == [1, 2]
    assert manifest["coco_categories_left_out"][0]["id"] == 0
    assert any("'animals'" in str(w.message) for w in caught)
    labels = {k: e["labels"].tolist() for k, e in _examples(str(tmp_path / "out" / "c-*")).items()}
    assert labels == {"a": [1], "b": [2]}


def test_coco_size_of_the_stored_pixels_of_a_rotated_photo_is_explained(tmp_path):
    data = _coco_data()
    data["images"] = data["images"][:1]
    data["annotations"] = data["annotations"][:1]
    (tmp_path / "images").mkdir()
    _exif_jpeg(tmp_path / "images" / "a.jpg", H, W, orientation=8)
    with pytest.raises(BadInputError, match=r"a\.jpg: the JSON says 40x30.*EXIF orientation 8"):
        _coco(tmp_path, data, files=())


# ---------------------------------------------------------------------------------- pairs


def _grey_png(path, values: np.ndarray, bit_depth: int) -> None:
    path.write_bytes(grey_png_bytes(values, bit_depth))


def _pairs_root(tmp_path, write_mask, image=None):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    if image is None:
        _write_image(tmp_path / "images" / "a.png", 16, 24)
    else:
        image(tmp_path / "images")
    write_mask(tmp_path / "masks" / "a.png")
    return tmp_path


def _pairs(root, **options):
    options.setdefault("classes", "background,cell,nucleus")
    folders = (str(root / "images"), str(root / "masks"), str(root / "out" / "p"))
    return convert_pairs(*folders, progress=False, **options)


@pytest.mark.parametrize("bit_depth", [1, 2, 4])
def test_pairs_low_bit_depth_grey_masks_keep_their_values(tmp_path, bit_depth):
    # Decoders scale 1/2/4-bit grey to 8 bits: a 1-bit 0/1 mask read as 0/255 (all ignored).
    truth = np.zeros((16, 24), np.uint8)
    truth[4:10, 5:15] = 1
    if bit_depth > 1:
        truth[11:14, 2:6] = 2
    root = _pairs_root(tmp_path, lambda p: _grey_png(p, truth, bit_depth))
    _pairs(root)
    np.testing.assert_array_equal(_examples(str(root / "out" / "p-*"))["a"]["mask"], truth)


@pytest.mark.parametrize("classes", ["background,cell", None])
def test_pairs_mask_of_only_background_and_ignore_is_refused(tmp_path, classes):
    # A binary mask saved 0/255: 255 is the ignore label, so the object was silently ignored.
    truth = np.zeros((16, 24), np.uint8)
    truth[4:10, 5:15] = 255
    root = _pairs_root(tmp_path, lambda p: cv2.imwrite(str(p), truth))
    why = r"a\.png: .*only 0 and the ignore label 255.*--remap 255:1"
    with pytest.raises(BadInputError, match=why):
        _pairs(root, classes=classes)
    manifest = _pairs(root, classes=classes, remap=["255:1"])
    assert manifest["num_images"] == 1


def _mask_set(tmp_path, masks: dict[str, np.ndarray]):
    """Images and their masks (0/1 grey PNGs as image editors save them), one per name."""
    for folder in ("images", "masks"):
        (tmp_path / folder).mkdir()
    for name, mask in masks.items():
        _write_image(tmp_path / "images" / f"{name}.png")
        assert cv2.imwrite(str(tmp_path / "masks" / f"{name}.png"), mask)
    return tmp_path


@pytest.mark.parametrize("classes", ["background,building", None])
def test_pairs_masks_without_an_object_convert_in_a_set_with_objects(tmp_path, classes):
    # Aerial tiles with a no-data border and no building: 0 and 255 only. Refused alone
    # ("needs --remap 255:1", which would relabel every void pixel as a building).
    with_object = np.zeros((H, W), np.uint8)
    with_object[5:15, 10:30] = 1
    with_object[:, 36:] = 255
    void_strip = np.zeros((H, W), np.uint8)
    void_strip[25:, :] = 255
    root = _mask_set(tmp_path, {"a": with_object, "b": void_strip, "c": np.zeros((H, W), np.uint8)})
    with pytest.warns(UserWarning, match=r"1 of the 3 masks .*only 0 and the ignore label.*b\.png"):
        manifest = _pairs(root, classes=classes)
    assert manifest["num_images"] == 3 and manifest["masks_only_background_and_ignore"] == 1
    assert manifest["classes"] == (classes.split(",") if classes else ["class_0", "class_1"])
    examples = _examples(str(root / "out" / "p-*"))
    for name, truth in (("a", with_object), ("b", void_strip)):
        np.testing.assert_array_equal(examples[name]["mask"], truth)


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_pairs_set_where_no_mask_holds_a_class_is_refused_naming_masks(tmp_path, on_error):
    # A binary set saved 0/255: every object is at the ignore label, in every mask.
    objects = []
    for k in range(3):
        mask = np.zeros((H, W), np.uint8)
        mask[2 + 5 * k : 8 + 5 * k, 4:20] = 255
        objects.append(mask)
    masks = {"a": objects[0], "b": objects[1], "c": np.zeros((H, W), np.uint8), "d": objects[2]}
    root = _mask_set(tmp_path, masks)
    why = (
        r"a\.png: no mask holds a class id other than 0: 3 of the 4 masks hold only 0 and the "
        r"ignore label 255 \(after --remap\) \(a\.png, b\.png, d\.png\).*--remap 255:1"
    )
    with pytest.raises(BadInputError, match=why):
        _pairs(root, classes="background,object", on_error=on_error)
    assert not (root / "out").exists()
    manifest = _pairs(root, classes="background,object", remap=["255:1"])
    assert manifest["num_images"] == 4 and manifest["masks_only_background_and_ignore"] == 0
    np.testing.assert_array_equal(
        _examples(str(root / "out" / "p-*"))["d"]["mask"], objects[2] // 255
    )


def test_cli_pairs_void_bordered_mask_without_object_converts(tmp_path, capsys):
    with_object = np.zeros((H, W), np.uint8)
    with_object[5:15, 10:30] = 1
    void_strip = np.zeros((H, W), np.uint8)
    void_strip[:, :6] = 255
    root = _mask_set(tmp_path, {"a": with_object, "b": void_strip})
    argv = ["convert", "pairs", "--images", str(root / "images"), "--masks", str(root / "masks")]
    argv += ["--classes", "background,building", "--output", str(root / "out" / "p")]
    with pytest.warns(UserWarning, match=r"b\.png"):
        assert cli.main(argv) == 0
    assert "wrote 2 images" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("ignore_label", "why"), [(300, r"\[0, 255\]"), (-1, r"\[0, 255\]"), (1, r"class 'cell'")]
)
def test_pairs_ignore_label_is_checked(tmp_path, ignore_label, why):
    root = _pairs_root(tmp_path, lambda p: cv2.imwrite(str(p), np.zeros((16, 24), np.uint8)))
    with pytest.raises(ValueError, match=rf"ignore_label={ignore_label}: .*" + why):
        _pairs(root, ignore_label=ignore_label)


def test_pairs_mask_of_the_stored_pixels_of_a_rotated_photo_is_explained(tmp_path):
    root = _pairs_root(
        tmp_path,
        lambda p: cv2.imwrite(str(p), np.zeros((16, 24), np.uint8)),
        image=lambda folder: _exif_jpeg(folder / "a.jpg", 16, 24, orientation=6),
    )
    with pytest.raises(BadInputError, match=r"a\.png: .*EXIF orientation 6"):
        _pairs(root)


# ---------------------------------------------------------------------------------- shapes


@pytest.mark.parametrize(
    ("options", "why"),
    [({"seed": -1}, r"seed=-1: expected"), ({"size": 100_000}, r"size=100000: expected at most")],
)
def test_shapes_arguments_are_named(tmp_path, options, why):
    with pytest.raises(ValueError, match=why):
        convert_shapes(str(tmp_path / "s"), num_images=1, progress=False, **options)


@pytest.mark.parametrize("bit_depth", [1, 2])
def test_instances_low_bit_depth_grey_masks_keep_their_ids(tmp_path, bit_depth):
    # A 1-bit mask of one instance read as id 255 ("instance ids 1..254 have no pixels");
    # a 2-bit mask of ids 1 and 2 read as 85 and 170.
    ids = np.zeros((16, 24), np.uint8)
    ids[2:7, 3:11] = 1
    if bit_depth > 1:
        ids[9:14, 12:20] = 2
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    _write_image(tmp_path / "images" / "a.png", 16, 24)
    _grey_png(tmp_path / "masks" / "a_mask.png", ids, bit_depth)
    convert_instances(
        str(tmp_path / "images"),
        str(tmp_path / "masks"),
        str(tmp_path / "out" / "i"),
        class_name="cell",
        progress=False,
    )
    (example,) = read_examples(str(tmp_path / "out" / "i-*"))
    # The reference: one 0/1 mask per id of the array written into the file, in id order.
    want = np.stack([(ids == k).astype(np.uint8) for k in range(1, int(ids.max()) + 1)])
    np.testing.assert_array_equal(example["instance_masks"], want)
