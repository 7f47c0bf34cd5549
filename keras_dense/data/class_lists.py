"""Class lists that must agree: between shards, with a recipe, and with a model card.

A model trained on one class list and fed shards of another gives numbers that look fine and
mean nothing (a 4-class model on 6-class shards: mIoU 0.0001, exit 0), so every place that
brings shards and a class list together checks them here first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from keras_dense.data.errors import BadInputError
from keras_dense.data.shard_manifest import find_manifest, load_manifest, manifest_shards
from keras_dense.data.tfrecord_files import resolve_files


def object_classes(names: Sequence[str]) -> list[str]:
    """Detection class names: without the leading "background" of a segmentation list."""
    names = list(names)
    return names[1:] if names and names[0] == "background" else names


def shard_manifests(pattern: str | Sequence[str]) -> dict[str, dict]:
    """The manifests of the shards matching `pattern`, by manifest path.

    A JSON named like a manifest that is not one (another tool's, e.g. the COCO `train.json`
    beside Model Garden shards `train-*.tfrecord`) is left out, as the checksum checks leave
    it (`shard_manifest.manifest_shards`): such shards have no class list of their own.

    Raises:
        BadInputError: No shard matches, or a manifest is unreadable or damaged.
    """
    manifests: dict[str, dict] = {}
    seen: set[str] = set()
    for shard in resolve_files(pattern):
        path = find_manifest(shard)
        if path is None or path in seen:
            continue
        seen.add(path)
        manifest = load_manifest(path)
        if manifest_shards(path, manifest) is not None:
            manifests[path] = manifest
    return manifests


def _describe(path: str, manifest: dict) -> str:
    return f"{path}: classes {manifest.get('classes')}, ignore_label {manifest.get('ignore_label')}"


def agreed_manifest_classes(
    patterns: dict[str, str | Sequence[str]],
    class_names: Callable[[list[str]], list[str]] = list,
) -> tuple[list[str] | None, int | None, dict[str, dict]]:
    """The one class list (and ignore label) of every manifest of several shard patterns.

    Args:
        patterns: Shard patterns by where they come from (e.g. `{"data.train": ...}`); empty
            patterns are left out.
        class_names: Maps a manifest's class list to the one compared (a task's
            `class_names`, e.g. `object_classes` for detection).

    Returns:
        `(classes, ignore_label, manifests)`: `(None, None, {})` when no shard has a manifest.

    Raises:
        BadInputError: Two manifests disagree; the message lists each with its classes.
    """
    manifests: dict[str, dict] = {}
    for pattern in patterns.values():
        if pattern:
            manifests.update(shard_manifests(pattern))
    if not manifests:
        return None, None, {}

    def key(manifest):
        return tuple(class_names(list(manifest.get("classes") or []))), manifest.get("ignore_label")

    kinds = {key(m) for m in manifests.values()}
    if len(kinds) > 1:
        listing = "; ".join(_describe(p, m) for p, m in sorted(manifests.items()))
        raise BadInputError(
            ", ".join(f"{k} = {v!r}" for k, v in patterns.items() if v),
            f"the shards come from data sets with different class lists ({listing}); one run "
            "needs one class list: convert them with the same --classes, or use one data set",
        )
    classes, ignore_label = kinds.pop()
    return list(classes), ignore_label, manifests


def check_card_classes(
    pattern: str,
    card: dict,
    class_names: Callable[[list[str]], list[str]] = list,
    flag: str = "--data",
) -> None:
    """Refuses shards whose manifest's class list differs from a model card's.

    Args:
        pattern: The shards.
        card: The model card (`classes`, `ignore_label`).
        class_names: The card's task's `class_names` (how a manifest's list is read).
        flag: The option that named the shards, for the message.

    Raises:
        BadInputError: The lists differ (both are named).
    """
    classes, ignore_label, manifests = agreed_manifest_classes({flag: pattern}, class_names)
    if classes is None:
        return
    expected = class_names(list(card["classes"]))
    same_ignore = ignore_label is None or ignore_label == card.get("ignore_label")
    if classes != expected or not same_ignore:
        raise BadInputError(
            f"{flag} {pattern}",
            f"the shards' classes {classes} (ignore_label {ignore_label}, from "
            f"{', '.join(sorted(manifests))}) differ from the model card's {expected} "
            f"(ignore_label {card.get('ignore_label')}): the model would be scored against "
            "labels it does not predict; use shards converted with the model's class list",
        )


def check_classifier_classes(pattern: str, card: dict, flag: str = "--data") -> None:
    """`check_card_classes` for a weakly supervised classifier's card (task classification).

    Background is not a classifier class (`object_classes` reads both lists), and a card
    without an ignore label means 255, as the classifier's commands read it.

    Raises:
        BadInputError: The shards' class list (or ignore label) differs from the card's.
    """
    ignore_label = card.get("ignore_label")
    card = {**card, "ignore_label": 255 if ignore_label is None else int(ignore_label)}
    check_card_classes(pattern, card, object_classes, flag)
