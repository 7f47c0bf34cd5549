"""CrfRnn layer: mean field vs an exact NumPy reference, op vs twin, batches, gradients,
refinement, iterations, with_crf, .keras round trip and a custom-op-free SavedModel."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_dense
from keras_dense.layers import CrfRnn, Denormalization, set_crf_iterations, use_portable_crf
from keras_dense.ops import loader

from crf_reference import mean_field, mean_iou, synthetic_problem
from helpers import keras_roundtrip_in_subprocess, run_python


@pytest.fixture(scope="module")
def op():
    """The custom op library; skips when it cannot be built here (no C++ compiler)."""
    if loader.find_compiler() is None and not loader.library_path().exists():
        pytest.skip("no C++ compiler to build the permutohedral op (set $CXX or install g++)")
    return loader.load_library()


def _random_inputs(batch=2, height=12, width=14, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (batch, height, width, classes)).astype(np.float32)
    image = np.repeat(np.repeat(rng.uniform(0, 255, (batch, 3, 4, 3)), 4, 1), 4, 2)
    image = (image[:, :height, :width] + rng.normal(0, 4, (batch, height, width, 3))).clip(0, 255)
    return logits, image.astype(np.float32)


def _layer_with_random_matrices(implementation, classes=4, seed=1, **kwargs):
    layer = CrfRnn(classes, implementation=implementation, **kwargs)
    layer.build([(None, None, None, classes), (None, None, None, 3)])
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.normal(0, 2, (classes, classes)).astype(np.float32) for _ in range(3)])
    return layer


@pytest.mark.parametrize("implementation", ["custom_op", "tf"])
def test_mean_field_matches_exact_reference(op, implementation):
    logits, image = _random_inputs(batch=1)
    params = dict(theta_alpha=6.0, theta_beta=30.0, theta_gamma=2.0, num_iterations=4)
    layer = _layer_with_random_matrices(implementation, **params)
    got = np.asarray(layer([logits, image]))[0].reshape(-1, 4)
    spatial, bilateral, compatibility = layer.get_weights()
    expected = mean_field(
        logits[0].reshape(-1, 4).astype(np.float64),
        image[0],
        6.0,
        30.0,
        2.0,
        spatial,
        bilateral,
        compatibility,
        4,
    )
    # The lattice approximates the kernels (a few % error), so logits agree closely but not
    # exactly; non-symmetric random matrices make transposition mistakes visible.
    scale = np.abs(expected - logits[0].reshape(-1, 4)).mean()
    assert np.abs(got - expected).mean() < 0.1 * scale
    assert np.mean(got.argmax(-1) == expected.argmax(-1)) > 0.97


def test_default_initialisation_is_potts_with_weighted_identities():
    layer = CrfRnn(5, spatial_weight=2.0, bilateral_weight=7.0)
    layer.build([(None, 8, 8, 5), (None, 8, 8, 3)])
    spatial, bilateral, compatibility = layer.get_weights()
    np.testing.assert_array_equal(spatial, 2.0 * np.eye(5))
    np.testing.assert_array_equal(bilateral, 7.0 * np.eye(5))
    np.testing.assert_array_equal(compatibility, 1.0 - np.eye(5))
    assert [w.name for w in layer.trainable_weights] == [
        "spatial_kernel_weights",
        "bilateral_kernel_weights",
        "compatibility",
    ]


def test_custom_op_and_twin_agree_and_batches_are_independent(op):
    logits, image = _random_inputs(batch=2)
    image[1] = image[1] * 0.3  # different lattice sizes across the batch
    outputs = {}
    for implementation in ("custom_op", "tf"):
        layer = _layer_with_random_matrices(implementation, num_iterations=3)
        outputs[implementation] = np.asarray(layer([logits, image]))
        for i in range(2):
            single = np.asarray(layer([logits[i : i + 1], image[i : i + 1]]))
            np.testing.assert_allclose(single[0], outputs[implementation][i], atol=1e-5)
    np.testing.assert_allclose(outputs["custom_op"], outputs["tf"], atol=1e-4)


def test_gradients_op_vs_twin_and_numerical(op):
    logits, image = _random_inputs(batch=2, height=8, width=9, classes=3)
    upstream = np.random.default_rng(5).normal(size=logits.shape).astype(np.float32)
    grads = {}
    for implementation in ("custom_op", "tf"):
        layer = _layer_with_random_matrices(implementation, classes=3, num_iterations=3)
        x = tf.constant(logits)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(layer([x, image]) * upstream)
        grads[implementation] = [
            g.numpy() for g in tape.gradient(loss, [x, *layer.trainable_weights])
        ]
        assert all(np.abs(g).max() > 0 for g in grads[implementation])
    for a, b in zip(grads["custom_op"], grads["tf"]):
        np.testing.assert_allclose(a, b, atol=1e-4 * max(1.0, np.abs(b).max()))

    layer = _layer_with_random_matrices("custom_op", classes=3, num_iterations=2)
    small = tf.function(lambda x: layer([x, image[:1, :5, :6]]))
    theoretical, numerical = tf.test.compute_gradient(small, [logits[:1, :5, :6]], delta=1e-2)
    np.testing.assert_allclose(theoretical[0], numerical[0], atol=2e-2)


@pytest.mark.parametrize("implementation", ["custom_op", "tf"])
def test_fit_trains_the_crf_matrices(op, implementation):
    image, truth, probabilities = synthetic_problem(24, seed=6)
    logits_in = keras.Input((24, 24, 3))
    image_in = keras.Input((24, 24, 3))
    crf = CrfRnn(3, theta_beta=10.0, num_iterations=3, implementation=implementation)
    model = keras.Model([logits_in, image_in], keras.layers.Softmax()(crf([logits_in, image_in])))
    model.compile(keras.optimizers.SGD(0.05), "sparse_categorical_crossentropy")
    x = [np.log(probabilities)[None], image[None].astype(np.float32)]
    before = [w.copy() for w in crf.get_weights()]
    history = model.fit(x, truth[None], epochs=3, verbose=0)
    assert all(np.abs(a - b).max() > 1e-4 for a, b in zip(before, crf.get_weights()))
    assert history.history["loss"][-1] < history.history["loss"][0]


def test_refinement_raises_iou_on_synthetic_image():
    image, truth, probabilities = synthetic_problem(48, seed=0)
    layer = CrfRnn(3)
    refined = np.asarray(layer([np.log(probabilities)[None], image[None].astype(np.float32)]))
    before = mean_iou(probabilities.argmax(-1), truth)
    after = mean_iou(refined[0].argmax(-1), truth)
    assert before < 0.9
    assert after > before + 0.1


def test_num_iterations_override():
    logits, image = _random_inputs(batch=1)
    layer = _layer_with_random_matrices("auto", num_iterations=5)
    np.testing.assert_array_equal(np.asarray(layer([logits, image], num_iterations=0)), logits)
    ten = np.asarray(layer([logits, image], num_iterations=10))
    assert np.abs(ten - np.asarray(layer([logits, image]))).max() > 1e-3

    inputs = [keras.Input((None, None, 4)), keras.Input((None, None, 3))]
    model = keras.Model(inputs, _layer_with_random_matrices("auto", num_iterations=5)(inputs))
    model.get_layer(index=2).set_weights(layer.get_weights())
    model.predict([logits, image], verbose=0)  # traces the predict function with 5
    set_crf_iterations(model, 10)
    np.testing.assert_allclose(model.predict([logits, image], verbose=0), ten, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="num_iterations"):
        set_crf_iterations(model, -1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        CrfRnn(0)
    with pytest.raises(ValueError, match="theta_beta"):
        CrfRnn(3, theta_beta=0)
    with pytest.raises(ValueError, match="implementation"):
        CrfRnn(3, implementation="gpu")
    with pytest.raises(ValueError, match="num_iterations"):
        CrfRnn(3, num_iterations=2.5)
    with pytest.raises(ValueError, match="num_classes=3"):
        CrfRnn(3)([keras.Input((8, 8, 4)), keras.Input((8, 8, 3))])
    with pytest.raises(ValueError, match="same height"):
        CrfRnn(3)([keras.Input((8, 8, 3)), keras.Input((9, 8, 3))])


def _tiny_segmenter(activation=None, padding="same"):
    return keras_dense.apps.unet(
        num_classes=3,
        input_shape=(None, None, 3),
        padding=padding,
        filters=4,
        depth=2,
        activation=activation,
    )


def test_with_crf_feeds_the_raw_image_and_keeps_the_activation():
    model = _tiny_segmenter(activation="softmax")
    combined = keras_dense.apps.with_crf(model, normalization="caffe", num_iterations=2)
    assert combined.input_shape == model.input_shape
    assert combined.layers[-1].name == model.layers[-1].name  # softmax re-applied last
    crf = combined.get_layer("crf_rnn")
    assert crf.num_classes == 3 and crf.num_iterations == 2
    raw = np.random.default_rng(0).uniform(0, 255, (1, 20, 24, 3)).astype(np.float32)
    normalised = keras_dense.data.normalize(raw, "caffe").numpy()
    recovered = Denormalization("caffe")(normalised)
    np.testing.assert_allclose(np.asarray(recovered), raw, atol=1e-3)
    probabilities = combined.predict(normalised, verbose=0)
    np.testing.assert_allclose(probabilities.sum(-1), 1.0, atol=1e-5)

    # The same result by hand: segmenter logits + CrfRnn on the raw image.
    logits_model = keras.Model(model.input, model.layers[-1].input)
    logits = logits_model.predict(normalised, verbose=0)
    expected = tf.nn.softmax(crf([logits, raw])).numpy()
    np.testing.assert_allclose(probabilities, expected, atol=1e-4)


@pytest.mark.parametrize("mode", ["caffe", "torch", "tf", None])
def test_denormalization_inverts_every_mode(mode):
    raw = np.random.default_rng(1).uniform(0, 255, (2, 5, 6, 3)).astype(np.float32)
    normalised = keras_dense.data.normalize(raw, mode).numpy()
    if mode is not None:
        assert np.abs(normalised - raw).max() > 1.0
    np.testing.assert_allclose(np.asarray(Denormalization(mode)(normalised)), raw, atol=1e-3)
    with pytest.raises(ValueError, match="normalization"):
        Denormalization("imagenet")


def test_with_crf_crops_the_image_for_valid_unet():
    model = _tiny_segmenter(padding="valid")
    combined = keras_dense.apps.unet(
        num_classes=3, input_shape=(None, None, 3), filters=4, depth=2, crf=True
    )
    assert "crf_image_crop" in [layer.name for layer in combined.layers]
    x = np.zeros((1, 28, 28, 3), np.float32)
    assert combined.predict(x, verbose=0).shape == model.predict(x, verbose=0).shape


def test_every_builder_takes_crf():
    import inspect

    from keras_dense.tasks import get_task

    builders = [getattr(keras_dense.apps, n) for n in get_task("segmentation").builders]
    assert len(builders) >= 7  # FCN-8/16/32s, DeconvNet, U-Net, DeepLab, PSPNet
    for builder in builders:
        assert inspect.signature(builder).parameters["crf"].default is False, builder.__name__
    fcn = keras_dense.apps.fcn8s(num_classes=3, input_shape=(64, 64, 3), crf=True)
    deconv = keras_dense.apps.deconvnet(
        num_classes=3, input_shape=(32, 32, 3), fc_padding="same", fc_filters=8, crf=True
    )
    deeplab = keras_dense.apps.deeplab(
        num_classes=3, backbone="mobilenetv2", input_shape=(32, 32, 3), crf=True
    )
    for model, normalization in ((fcn, "caffe"), (deconv, "caffe"), (deeplab, "tf")):
        assert isinstance(model.get_layer("crf_rnn"), CrfRnn)
        assert model.get_layer("crf_image").normalization == normalization
        assert model.output_shape[-1] == 3 and model.output_shape[1:3] == model.input_shape[1:3]


def test_keras_round_trip(tmp_path):
    model = keras_dense.apps.with_crf(_tiny_segmenter(), normalization="caffe", num_iterations=3)
    crf = model.get_layer("crf_rnn")
    rng = np.random.default_rng(3)
    crf.set_weights([w + rng.normal(0, 0.1, w.shape).astype(np.float32) for w in crf.get_weights()])
    config = crf.get_config()
    assert config["num_iterations"] == 3 and config["implementation"] == "auto"
    assert json.dumps(config)  # plain values only
    x = rng.normal(0, 40, (2, 24, 20, 3)).astype(np.float32)
    keras_roundtrip_in_subprocess(model, x, tmp_path, atol=1e-5)


@pytest.mark.parametrize(
    "crf_kwargs", [{}, {"pairwise": "learned", "loose": True}], ids=["gaussian", "learned"]
)
def test_saved_model_runs_without_the_custom_op(op, tmp_path, crf_kwargs):
    model = keras_dense.apps.with_crf(
        _tiny_segmenter(), normalization="caffe", num_iterations=3, **crf_kwargs
    )
    assert use_portable_crf(model) is model
    assert model.get_layer("crf_rnn").implementation == "tf"
    x = np.random.default_rng(4).normal(0, 40, (2, 24, 20, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    path = tmp_path / "saved_model"
    model.export(str(path), verbose=False)
    np.save(tmp_path / "x.npy", x)
    output = run_python(
        f"""
        import json, sys
        import numpy as np
        import tensorflow as tf
        from tensorflow.python.framework import op_def_registry

        loaded = tf.saved_model.load({str(path)!r})
        function = loaded.signatures["serving_default"]
        x = np.load({str(tmp_path / "x.npy")!r})
        out = list(function(tf.constant(x)).values())[0].numpy()
        np.save({str(tmp_path / "out.npy")!r}, out)
        graph = function.graph.as_graph_def()
        ops = {{node.op for node in graph.node}}
        for fn in graph.library.function:  # nested functions (while bodies, calls, ...)
            ops |= {{node.op for node in fn.node_def}}
        maps = open("/proc/self/maps").read()
        print(json.dumps({{
            "ops": sorted(ops),
            "unregistered": sorted(o for o in ops if op_def_registry.get(o) is None),
            "library_mapped": "permutohedral" in maps,
            "keras_dense_imported": any(m.startswith("keras_dense") for m in sys.modules),
        }}))
        """
    )
    report = json.loads(output.strip().splitlines()[-1])
    assert report["unregistered"] == []
    assert not any(name.startswith("KerasDense") for name in report["ops"])
    assert {"SparseTensorDenseMatMul", "Unique"} <= set(report["ops"])  # the twin is in there
    assert not report["library_mapped"] and not report["keras_dense_imported"]
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), expected, atol=1e-4)
