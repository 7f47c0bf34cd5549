"""Training from TOML recipes: recipes, schedules, optimizers, strategy and the trainer."""

from keras_dense.training.recipe import RecipeError, load_recipe, parse_override, validate
from keras_dense.training.schedules import PolyDecay
from keras_dense.training.trainer import train

__all__ = [
    "PolyDecay",
    "RecipeError",
    "load_recipe",
    "parse_override",
    "train",
    "validate",
]
