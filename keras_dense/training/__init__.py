"""Training from TOML recipes: recipes, losses, metrics, schedules, strategy and the trainer."""

from keras_dense.training.losses import MaskedSparseCrossEntropy
from keras_dense.training.metrics import ConfusionMatrixMetric, PixelAccuracy
from keras_dense.training.model_card import read_model_card, write_model_card
from keras_dense.training.recipe import RecipeError, load_recipe, parse_override, validate
from keras_dense.training.schedules import PolyDecay
from keras_dense.training.trainer import train

__all__ = [
    "ConfusionMatrixMetric",
    "MaskedSparseCrossEntropy",
    "PixelAccuracy",
    "PolyDecay",
    "RecipeError",
    "load_recipe",
    "parse_override",
    "read_model_card",
    "train",
    "validate",
    "write_model_card",
]
