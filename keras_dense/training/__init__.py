"""Training from TOML recipes: recipes, schedules, optimizers, strategy and the trainer."""

from keras_dense.training.recipe import (
    Recipe,
    RecipeError,
    load_config,
    load_recipe,
    parse_override,
    parse_recipe,
    validate,
)
from keras_dense.training.schedules import PolyDecay
from keras_dense.training.trainer import train

__all__ = [
    "PolyDecay",
    "Recipe",
    "RecipeError",
    "load_config",
    "load_recipe",
    "parse_override",
    "parse_recipe",
    "train",
    "validate",
]
