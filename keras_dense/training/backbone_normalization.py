"""A recipe's input normalisation against its pretrained backbone's.

ImageNet weights expect the inputs their network was trained on: "caffe" for VGG16 and
ResNet v1, "tf" for Xception, MobileNetV2 and ResNet v2, raw 0-255 RGB for the networks that
normalise inside (MobileNetV3, EfficientNetV2, ConvNeXt). A recipe that loads such weights
with another `data.normalization` trains from features that mean nothing; nothing fails, the
results are just poor. This check names the mismatch when the recipe is read.
"""

from __future__ import annotations

import inspect

from keras_dense import apps
from keras_dense.backbones import get_backbone
from keras_dense.tasks.recipe_config import Recipe
from keras_dense.utils.errors import RecipeError


def _mode_name(mode: str | None) -> str:
    return "none" if mode is None else mode


def check_backbone_normalization(recipe: Recipe) -> None:
    """Raises `RecipeError` when pretrained backbone weights meet another normalisation.

    Only recipes that load `backbone_weights` are checked: a backbone trained from scratch
    learns whatever normalisation the data has.

    Args:
        recipe: The parsed recipe.

    Raises:
        RecipeError: `data.normalization` differs from the backbone family's, naming both.
    """
    kwargs = dict(recipe.model.kwargs)
    weights = kwargs.get("backbone_weights")
    builder = getattr(apps, recipe.model.builder, None)
    if weights in (None, "none") or builder is None:
        return
    parameter = inspect.signature(builder).parameters.get("backbone")
    name = kwargs.get("backbone", None if parameter is None else parameter.default)
    if not isinstance(name, str):
        return  # no registered family (a plain U-Net, or a backbone model object)
    try:
        family = get_backbone(name)
    except ValueError:
        return  # the builder names an unknown backbone when the model is built
    if not family.pretrained:
        return
    wanted, given = family.normalization, recipe.data.normalization_mode
    if wanted != given:
        raise RecipeError(
            f"recipe key 'data.normalization' = {_mode_name(given)!r}: backbone={name!r} "
            f"with backbone_weights={weights!r} expects {_mode_name(wanted)!r}, the "
            f"normalisation its pretrained weights were trained with; set data.normalization "
            f"= {_mode_name(wanted)!r} (or train from scratch with backbone_weights = 'none')"
        )
