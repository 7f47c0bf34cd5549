"""Export to SavedModel: round trip in a fresh process without keras_dense, geometry of
fixed-size and valid models, detection, atomic versions, refusals and bad input."""

from __future__ import annotations

import json
import os
import struct
import zlib

import cv2
import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dense
from keras_dense import cli
from keras_dense.apps.unet_model import unet_margin
from keras_dense.export import (
    NonFiniteWeightsError,
    OpAuditError,
    VersionExistsError,
    audit_graph_def,
    audit_saved_model,
    export_saved_model,
    list_versions,
    saved_model_export,
)
from keras_dense.utils.model_card import write_model_card

from export_test_utils import (
    assert_classes_match,
    decode_rgb,
    encode,
    make_image,
    normalize_np,
    small_unet,
)
from helpers import run_python

# name -> (height, width, format, grey)
IMAGES = {
    "a": (37, 45, "png", False),
    "b": (64, 50, "jpg", False),
    "c": (33, 33, "png", True),
    "d": (37, 45, "jpg", False),
}
BATCHES = {"mixed": ["a", "b", "c"], "uniform": ["a", "d"], "single": ["b"]}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Encoded test images written to files: name -> (path, bytes)."""
    folder = tmp_path_factory.mktemp("images")
    result = {}
    for seed, (name, (height, width, fmt, grey)) in enumerate(IMAGES.items()):
        data = encode(make_image(height, width, seed, grey), fmt)
        path = folder / f"{name}.{fmt}"
        path.write_bytes(data)
        result[name] = (str(path), data)
    return result


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A small U-Net exported twice: through the CLI with a card ("torch"), and in pad mode."""
    root = tmp_path_factory.mktemp("saved_models")
    model = small_unet()
    model_path = str(root.parent / "unet.keras")
    model.save(model_path)
    write_model_card(model_path, {"task": "segmentation", "normalization": "torch"})
    assert cli.main(["export", "--model", model_path, "--output", str(root / "unet")]) == 0
    export_saved_model(model, root, name="unet_pad", batch_mode="pad", card={"normalization": "tf"})
    return {"root": root, "model": model}


def _lone_scores(model, data: bytes, mode: str) -> np.ndarray:
    x = normalize_np(decode_rgb(data), mode)
    return model.predict(x[None], verbose=0)[0]


def _padded_scores(model, datas: list[bytes], mode: str) -> list[np.ndarray]:
    xs = [normalize_np(decode_rgb(d), mode) for d in datas]
    height = max(x.shape[0] for x in xs)
    width = max(x.shape[1] for x in xs)
    batch = np.stack(
        [np.pad(x, ((0, height - len(x)), (0, width - x.shape[1]), (0, 0))) for x in xs]
    )
    scores = model.predict(batch, verbose=0)
    return [s[: x.shape[0], : x.shape[1]] for s, x in zip(scores, xs)]


def test_round_trip_in_a_fresh_process_without_keras_dense(exported, images, tmp_path):
    root = exported["root"]
    batches = {key: [images[n][0] for n in names] for key, names in BATCHES.items()}
    out = str(tmp_path / "out.npz")
    run_python(
        f"""
        import sys
        import numpy as np, tensorflow as tf
        results = {{}}
        for name in ("unet", "unet_pad"):
            serve = tf.saved_model.load({str(root)!r} + "/" + name + "/1").signatures[
                "serving_default"]
            for key, paths in {batches!r}.items():
                data = [open(p, "rb").read() for p in paths]
                outputs = serve(image_bytes=tf.constant(data))
                for output, value in outputs.items():
                    results[f"{{name}}/{{key}}/{{output}}"] = value.numpy()
        assert "keras_dense" not in sys.modules, "the SavedModel needed keras_dense"
        assert not any(m.startswith("keras_dense") for m in sys.modules)
        np.savez({out!r}, **results)
        """
    )
    got = np.load(out, allow_pickle=True)
    model = exported["model"]
    for key, names in BATCHES.items():
        datas = [images[n][1] for n in names]
        sizes = np.array([decode_rgb(d).shape[:2] for d in datas])
        padded = _padded_scores(model, datas, "tf")
        for name, references in (
            ("unet", [_lone_scores(model, d, "torch") for d in datas]),
            ("unet_pad", padded),
        ):
            classes = got[f"{name}/{key}/classes"]
            np.testing.assert_array_equal(got[f"{name}/{key}/image_sizes"], sizes)
            assert classes.shape == (len(names), *sizes.max(0))
            for i, (height, width) in enumerate(sizes):
                assert_classes_match(classes[i, :height, :width], references[i])
                assert (classes[i, height:] == -1).all() and (classes[i, :, width:] == -1).all()
                png = got[f"{name}/{key}/mask_png_bytes"][i]
                mask = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
                np.testing.assert_array_equal(mask, classes[i, :height, :width])


def test_model_card_travels_with_the_saved_model(exported):
    card_path = exported["root"] / "unet" / "1" / "assets.extra" / "model_card.json"
    card = json.loads(card_path.read_text())
    assert card["normalization"] == "torch"
    assert card["classes"] == ["class_0", "class_1", "class_2"]
    assert card["serving"]["geometry"] == {
        "fixed_size": None,
        "margin": 0,
        "offset": 0,
        "step": 1,
        "channels": 3,
        "minimum": 1,
    }
    assert card["exported_with"]["tensorflow"] == tf.__version__


def test_serving_tensor_is_the_raw_model(exported):
    serve = tf.saved_model.load(str(exported["root"] / "unet" / "1")).signatures["serving_tensor"]
    x = np.random.default_rng(3).normal(size=(2, 40, 52, 3)).astype(np.float32)
    got = serve(images=tf.constant(x))["scores"].numpy()
    np.testing.assert_allclose(got, exported["model"].predict(x, verbose=0), atol=1e-5)


def _forged_png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    return (
        b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))
    )


def test_bad_bytes_give_invalid_argument_not_a_crash(exported, images):
    serve = tf.saved_model.load(str(exported["root"] / "unet" / "1")).signatures["serving_default"]
    png, jpeg = images["a"][1], images["b"][1]
    bad_batches = {
        "garbage": [b"this is not an image"],
        "empty string": [b""],
        "bmp": [cv2.imencode(".bmp", make_image(8, 8, 0))[1].tobytes()],
        "truncated png": [png[: len(png) // 2]],
        "png signature only": [png[:8]],
        "truncated jpeg": [jpeg[: len(jpeg) // 2]],
        "jpeg header only": [jpeg[:20]],
        "huge forged png": [_forged_png(100_000, 100_000)],
        "one bad in a batch": [png, b"\x00" * 100],
        "no image": [],
    }
    for what, batch in bad_batches.items():
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(image_bytes=tf.constant(batch, dtype=tf.string))
            pytest.fail(f"{what} was accepted")
    # The signature still works afterwards.
    out = serve(image_bytes=tf.constant([png]))
    assert out["classes"].shape == (1, 37, 45)


def test_fixed_size_and_valid_models_follow_their_geometry(tmp_path):
    rgb = decode_rgb(encode(make_image(30, 41, 7), "png"))
    data = encode(rgb, "png")
    fixed = small_unet(input_shape=(48, 64, 3))
    valid = small_unet(padding="valid")
    margin = unet_margin(3)
    for name, model in (("fixed", fixed), ("valid", valid)):
        export_saved_model(model, tmp_path, name=name)
    # Fixed input size: resize to 64x48, run, resize the scores back (OpenCV, bilinear).
    x = cv2.resize(rgb.astype(np.float32), (64, 48), interpolation=cv2.INTER_LINEAR)
    scores = fixed.predict(normalize_np(x, "caffe")[None], verbose=0)[0]
    scores = cv2.resize(scores, (41, 30), interpolation=cv2.INTER_LINEAR)
    serve = tf.saved_model.load(str(tmp_path / "fixed" / "1")).signatures["serving_default"]
    assert_classes_match(serve(image_bytes=tf.constant([data]))["classes"].numpy()[0], scores)
    # Valid model: mirror the image by the margin, pad to a size it accepts (4 k), crop.
    x = np.pad(normalize_np(rgb, "caffe"), ((margin, margin), (margin, margin), (0, 0)), "reflect")
    height, width = (-(-s // 4) * 4 for s in x.shape[:2])
    x = np.pad(x, ((0, height - x.shape[0]), (0, width - x.shape[1]), (0, 0)))
    scores = valid.predict(x[None], verbose=0)[0, :30, :41]
    serve = tf.saved_model.load(str(tmp_path / "valid" / "1")).signatures["serving_default"]
    assert_classes_match(serve(image_bytes=tf.constant([data]))["classes"].numpy()[0], scores)


def test_geometry_of_the_builders_and_of_a_model_with_a_minimum_size(tmp_path):
    from keras_dense.apps.unet_model import unet_input_size
    from keras_dense.signatures.geometry import segmenter_geometry

    same = segmenter_geometry(small_unet())
    assert (same.fixed_size, same.margin, same.step, same.minimum) == (None, 0, 1, 1)
    valid = segmenter_geometry(small_unet(padding="valid"))
    assert (valid.margin, valid.step) == (unet_margin(3), 4)
    assert valid.minimum == unet_input_size(1, 3)
    for size in range(1, 200):  # every size the serving graph feeds is one U-Net accepts
        fed = valid.input_size(size)
        assert fed >= size + 2 * unet_margin(3) and fed == unet_input_size(size, 3)
    inputs = keras.Input((None, None, 3))
    shrunk = keras.layers.Conv2D(2, 9, padding="valid")(inputs)
    needs_nine = keras.Model(inputs, keras.layers.ZeroPadding2D(4)(shrunk))
    geometry = segmenter_geometry(needs_nine)
    assert (geometry.margin, geometry.step, geometry.minimum) == (0, 1, 9)
    assert geometry.input_size(5) == 9 and geometry.input_size(30) == 30
    fixed = segmenter_geometry(small_unet(input_shape=(48, 64, 3)))
    assert fixed.fixed_size == (48, 64)
    # Served: a 5x6 image is padded (mean pixel) to 9x9, the scores cropped back.
    export_saved_model(needs_nine, tmp_path, name="nine", card={"normalization": None})
    rgb = make_image(5, 6, 3)
    x = np.pad(rgb.astype(np.float32), ((0, 4), (0, 3), (0, 0)))[None]
    scores = needs_nine.predict(x, verbose=0)[0, :5, :6]
    serve = tf.saved_model.load(str(tmp_path / "nine" / "1")).signatures["serving_default"]
    got = serve(image_bytes=tf.constant([encode(rgb, "png")]))["classes"].numpy()[0]
    np.testing.assert_array_equal(got, scores.argmax(-1))


def _tiny_detector() -> keras.Model:
    keras.utils.set_random_seed(2)
    images = keras.Input((None, None, 3), name="images")
    rois = keras.Input((None, 4), name="rois")
    x = keras.layers.Conv2D(8, 3, strides=4, padding="same", activation="relu")(images)
    x = keras_dense.layers.RoIPooling(2, 0.25)([x, rois])
    x = keras.layers.Reshape((-1, 32))(x)
    x = keras.layers.Dense(16, activation="relu")(x)
    cls_score = keras.layers.Dense(3, name="cls_score")(x)
    bbox_pred = keras.layers.Dense(12, name="bbox_pred")(x)
    return keras_dense.apps.FastRCNN(inputs=[images, rois], outputs=[cls_score, bbox_pred])


def test_detection_signature_maps_boxes_back_to_the_original_pixels(tmp_path):
    model = _tiny_detector()
    options = dict(min_size=80, max_size=120, score_threshold=0.0, nms_iou=0.5, max_detections=20)
    export_saved_model(model, tmp_path, name="det", card={"task": "detection"}, **options)
    serve = tf.saved_model.load(str(tmp_path / "det" / "1")).signatures["serving_default"]
    datas = [encode(make_image(50, 70, 11), "png"), encode(make_image(60, 40, 12), "jpg")]
    proposals = np.array(
        [
            [[2, 3, 30, 40], [10, 10, 45, 60], [0, 5, 49, 69]],
            [[5, 5, 20, 30], [1, 1, 58, 38], [0, 0, 0, 0]],
        ],
        np.float32,
    )
    num = np.array([3, 2], np.int32)
    got = serve(image_bytes=tf.constant(datas), proposals=proposals, num_proposals=num)
    got = {key: value.numpy() for key, value in got.items()}
    for i, data in enumerate(datas):
        rgb = decode_rgb(data)
        height, width = rgb.shape[:2]
        scale = min(80 / min(height, width), 120 / max(height, width))
        new_h, new_w = round(height * scale), round(width * scale)
        x = cv2.resize(rgb.astype(np.float32), (new_w, new_h), interpolation=cv2.INTER_LINEAR)
        factors = np.array([new_h / height, new_w / width] * 2, np.float32)
        ref = keras_dense.detection.detect(
            model,
            normalize_np(x, "caffe")[None],
            proposals[i : i + 1, : num[i]] * factors,
            **{k: v for k, v in options.items() if k not in ("min_size", "max_size")},
        )
        count = int(ref["num_detections"][0])
        assert count > 0 and int(got["num_detections"][i]) == count
        np.testing.assert_allclose(
            got["detection_scores"][i, :count], ref["scores"][0, :count], atol=2e-3
        )
        np.testing.assert_array_equal(
            got["detection_classes"][i, :count], ref["classes"][0, :count]
        )
        np.testing.assert_allclose(
            got["detection_boxes"][i, :count], ref["boxes"][0, :count] / factors, atol=0.05
        )
        assert (got["detection_boxes"][i, :count, 2] <= height).all()
    # A batch of same-size images takes the one-call path: same answers.
    twice = serve(
        image_bytes=tf.constant(datas[:1] * 2),
        proposals=np.concatenate([proposals[:1]] * 2),
        num_proposals=num[:1].repeat(2),
    )
    for key, value in twice.items():
        for row in value.numpy():
            np.testing.assert_allclose(row, got[key][0], atol=1e-4)
    with pytest.raises(tf.errors.InvalidArgumentError):  # num_proposals beyond the rows given
        serve(
            image_bytes=tf.constant(datas),
            proposals=proposals,
            num_proposals=np.array([4, 1], np.int32),
        )


def test_versions_are_atomic_numbered_and_never_overwritten(tmp_path, monkeypatch):
    model = small_unet()
    seen = []
    real_audit = saved_model_export.audit_saved_model

    def audit_and_look(path):
        # While the version is being written the server must see nothing of it.
        seen.append((os.path.basename(path), sorted(os.listdir(tmp_path / "m"))))
        real_audit(path)

    monkeypatch.setattr(saved_model_export, "audit_saved_model", audit_and_look)
    assert export_saved_model(model, tmp_path, name="m", verify=False).version == 1
    assert export_saved_model(model, tmp_path, name="m", version=5, verify=False).version == 5
    assert export_saved_model(model, tmp_path, name="m", verify=False).version == 6
    assert list_versions(tmp_path / "m") == [1, 5, 6]
    assert sorted(os.listdir(tmp_path / "m")) == ["1", "5", "6"]  # no temporary folder left
    for tmp_name, listing in seen:
        assert not tmp_name.isdigit()  # TF Serving ignores non-integer folders
        assert tmp_name in listing
    assert [listing for _, listing in seen][1:] == [[seen[1][0], "1"], [seen[2][0], "1", "5"]]
    before = (tmp_path / "m" / "5" / "saved_model.pb").read_bytes()
    with pytest.raises(VersionExistsError, match="never overwritten"):
        export_saved_model(model, tmp_path, name="m", version=5, verify=False)
    assert (tmp_path / "m" / "5" / "saved_model.pb").read_bytes() == before
    with pytest.raises(ValueError, match="version"):
        export_saved_model(model, tmp_path, name="m", version=0)
    with pytest.raises(ValueError, match="name"):
        export_saved_model(model, tmp_path, name="../escape")


def test_non_finite_weights_refuse_export_naming_the_layer(tmp_path):
    model = small_unet()
    layer = model.get_layer("conv_u0d-score")
    kernel, bias = layer.get_weights()
    kernel[0, 0, 1, 2] = np.nan
    bias[1] = np.inf
    layer.set_weights([kernel, bias])
    with pytest.raises(NonFiniteWeightsError, match="conv_u0d-score") as error:
        export_saved_model(model, tmp_path, name="bad")
    assert error.value.weights == [("conv_u0d-score/kernel", 1), ("conv_u0d-score/bias", 1)]
    assert not (tmp_path / "bad").exists()


def _read_saved_model(saved_model_dir):
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((saved_model_dir / "saved_model.pb").read_bytes())
    return saved_model


def test_op_audit_finds_a_non_stock_op_in_a_nested_function(exported, tmp_path):
    source = exported["root"] / "unet" / "1"
    audit_saved_model(source)  # the real export is clean
    saved_model = _read_saved_model(source)
    graph = saved_model.meta_graphs[0].graph_def
    assert audit_graph_def(graph) == {}
    nested = [f for f in graph.library.function if any(n.op == "Conv2D" for n in f.node_def)]
    assert nested, "the model's convolutions should live in nested functions"
    node = next(n for n in nested[0].node_def if n.op == "Conv2D")
    node.op = "PermutohedralFilter"  # e.g. a custom CRF kernel
    assert audit_graph_def(graph) == {"PermutohedralFilter": [nested[0].signature.name]}
    (tmp_path / "variables").mkdir()
    (tmp_path / "saved_model.pb").write_bytes(saved_model.SerializeToString())
    with pytest.raises(OpAuditError, match="PermutohedralFilter"):
        audit_saved_model(tmp_path)


def test_export_refuses_a_graph_with_an_op_outside_the_stock_list(tmp_path, monkeypatch):
    from keras_dense.export import op_audit

    stock = op_audit.stock_op_names()
    monkeypatch.setattr(op_audit, "stock_op_names", lambda: stock - {"Conv2D"})
    with pytest.raises(OpAuditError, match="Conv2D") as error:
        export_saved_model(small_unet(), tmp_path, name="m", verify=False)
    assert error.value.unknown_ops["Conv2D"]  # found inside the library functions
    assert os.listdir(tmp_path / "m") == []  # nothing left behind


def _crf_model(implementation: str) -> keras.Model:
    from keras_dense.layers.crf_rnn import CrfRnn
    from keras_dense.layers.denormalization import Denormalization

    keras.utils.set_random_seed(5)
    inputs = keras.Input((None, None, 3))
    logits = keras.layers.Conv2D(3, 3, padding="same")(inputs)
    raw = Denormalization("caffe")(inputs)
    refined = CrfRnn(3, num_iterations=2, implementation=implementation)([logits, raw])
    return keras.Model(inputs, refined)


def _custom_op_or_skip():
    from keras_dense.ops import loader

    if loader.load_library(required=False) is None:
        pytest.skip("no C++ compiler to build the CRF custom op (the portable path is tested)")


def test_crf_layers_switch_to_the_portable_implementation(tmp_path):
    _custom_op_or_skip()
    model = _crf_model("custom_op")
    data = encode(make_image(24, 30, 9), "png")
    export_saved_model(model, tmp_path, name="crf")  # verify=True: same outputs as in memory
    assert [layer.implementation for layer in model.layers[-1:]] == ["tf"]
    serve = tf.saved_model.load(str(tmp_path / "crf" / "1")).signatures["serving_default"]
    got = serve(image_bytes=tf.constant([data]))["classes"].numpy()[0]
    x = normalize_np(decode_rgb(data), "caffe")[None]
    assert_classes_match(got, model.predict(x, verbose=0)[0])


def test_export_refuses_the_crf_custom_op(tmp_path, monkeypatch):
    _custom_op_or_skip()
    monkeypatch.setattr(saved_model_export, "portable_model", lambda model: model)
    with pytest.raises(OpAuditError, match="KerasDensePermutohedral") as error:
        export_saved_model(_crf_model("custom_op"), tmp_path, name="crf", verify=False)
    assert {"KerasDensePermutohedralBuild", "KerasDensePermutohedralFilter"} <= set(
        error.value.unknown_ops
    )
    assert os.listdir(tmp_path / "crf") == []


def test_export_command_reports_bad_input(tmp_path, capsys):
    assert (
        cli.main(
            ["export", "--model", str(tmp_path / "missing.keras"), "--output", str(tmp_path / "m")]
        )
        == 2
    )
    assert "missing.keras" in capsys.readouterr().err
