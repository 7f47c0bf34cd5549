"""A recipe that loads pretrained backbone weights must feed them their own normalisation."""

from __future__ import annotations

import pathlib

import pytest

from keras_dense.backbones import backbone_names, get_backbone
from keras_dense.training.recipe import load_config
from keras_dense.utils.errors import RecipeError

REPO = pathlib.Path(__file__).resolve().parents[1]

# The normalisation each keras.applications network's ImageNet weights were trained with,
# from its own `preprocess_input` (keras.applications docs), independent of our registry.
KERAS_PREPROCESSING = {
    "vgg16": "caffe",
    "resnet50": "caffe",
    "resnet101": "caffe",
    "resnet50v2": "tf",
    "resnet101v2": "tf",
    "xception": "tf",
    "mobilenetv2": "tf",
    "mobilenetv3small": None,
    "mobilenetv3large": None,
    "efficientnetv2b0": None,
    "efficientnetv2b1": None,
    "efficientnetv2b2": None,
    "efficientnetv2b3": None,
    "efficientnetv2s": None,
    "convnexttiny": None,
}


def test_every_pretrained_family_declares_its_keras_preprocessing():
    pretrained = [n for n in backbone_names() if get_backbone(n).pretrained]
    assert sorted(pretrained) == sorted(KERAS_PREPROCESSING)
    for name in pretrained:
        assert get_backbone(name).normalization == KERAS_PREPROCESSING[name], name


def _recipe(tmp_path, builder, kwargs, normalization):
    lines = "\n".join(f"{k} = {v!r}".replace("'", '"') for k, v in kwargs.items())
    path = tmp_path / "r.toml"
    path.write_text(
        f'task = "segmentation"\n[model]\nbuilder = "{builder}"\n[model.kwargs]\n{lines}\n'
        f'[data]\ntrain = "x-*.tfrecord"\nnormalization = "{normalization}"\n'
    )
    return str(path)


@pytest.mark.parametrize(
    "builder, kwargs, normalization, wanted",
    [
        ("deeplab", {"backbone": "mobilenetv2", "backbone_weights": "imagenet"}, "caffe", "tf"),
        ("deeplab", {"backbone_weights": "imagenet"}, "tf", "caffe"),  # default resnet50
        ("fcn8s", {"backbone_weights": "imagenet"}, "tf", "caffe"),  # VGG16 by the paper
        ("unet", {"backbone": "efficientnetv2b0", "backbone_weights": "imagenet"}, "tf", "none"),
    ],
)
def test_a_mismatch_is_named(tmp_path, builder, kwargs, normalization, wanted):
    with pytest.raises(RecipeError, match=rf"expects '{wanted}'") as err:
        load_config(_recipe(tmp_path, builder, kwargs, normalization))
    assert "data.normalization" in str(err.value)


@pytest.mark.parametrize(
    "kwargs, normalization",
    [
        ({"backbone": "mobilenetv2", "backbone_weights": "imagenet"}, "tf"),
        ({"backbone": "mobilenetv2", "backbone_weights": "none"}, "caffe"),  # from scratch
        ({"backbone": "mobilenetv2"}, "caffe"),
    ],
)
def test_matching_or_from_scratch_passes(tmp_path, kwargs, normalization):
    recipe = load_config(_recipe(tmp_path, "deeplab", kwargs, normalization))
    assert recipe.data.normalization == normalization


@pytest.mark.parametrize("path", sorted((REPO / "apps").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_recipe_feeds_its_backbone_its_normalization(path):
    load_config(str(path))
