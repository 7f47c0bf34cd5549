"""The backbone registry: every family, by name.

A family module defines a `Backbone` and calls `register_backbone`; its module path is one
line of `FAMILY_MODULES`, imported the first time the registry is read. Builders only call
`get_backbone(name)`.
"""

from __future__ import annotations

import importlib

from keras_dense.backbones.backbone import Backbone

# One line per family module (each registers one or more `Backbone`s).
FAMILY_MODULES: tuple[str, ...] = (
    "keras_dense.backbones.vgg16",
    "keras_dense.backbones.resnet",
    "keras_dense.backbones.xception",
    "keras_dense.backbones.mobilenet_v2",
    "keras_dense.backbones.compact",
    "keras_dense.backbones.resnet_v2",
    "keras_dense.backbones.mobilenet_v3",
    "keras_dense.backbones.efficientnet_v2",
    "keras_dense.backbones.convnext",
)

_REGISTRY: dict[str, Backbone] = {}
_loaded = False


def register_backbone(backbone: Backbone) -> Backbone:
    """Adds `backbone` under its name; returns it.

    Raises:
        ValueError: Another family already has that name.
    """
    existing = _REGISTRY.get(backbone.name)
    if existing is not None and existing is not backbone:
        raise ValueError(f"backbone {backbone.name!r} is already registered")
    _REGISTRY[backbone.name] = backbone
    return backbone


def _load_families() -> None:
    global _loaded
    if not _loaded:
        for module in FAMILY_MODULES:
            importlib.import_module(module)
        _loaded = True


def backbone_names() -> list[str]:
    """The registered names, sorted."""
    _load_families()
    return sorted(_REGISTRY)


def get_backbone(name: str, allowed=None) -> Backbone:
    """The family registered as `name`.

    Args:
        name: A registered name.
        allowed: Optional collection of names a builder accepts (e.g. FCN takes only VGG16).

    Raises:
        ValueError: `name` is not registered (or not allowed); the message lists the names.
    """
    _load_families()
    names = sorted(_REGISTRY) if allowed is None else sorted(set(allowed) & set(_REGISTRY))
    if not isinstance(name, str) or name not in names:
        raise ValueError(f"backbone={name!r}: expected one of {names}")
    return _REGISTRY[name]


def build_backbone(name: str, **kwargs):
    """`get_backbone(name).model(**kwargs)`: a functional model with outputs by stride."""
    return get_backbone(name).model(**kwargs)
