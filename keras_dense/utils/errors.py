"""Errors shared by every layer of the package."""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe is unreadable or invalid; the message names the file and the key."""
