"""What a TF Serving model folder serves: one model, in successive versions.

TF Serving's version labels (`stable`, `canary`, see `keras_dense.serving.configs`) and clients
that ask for "the latest version" assume every version of `ROOT/NAME` is the same model
(retrained, say): the same task, classes and signatures. `check_same_model` compares a new
version with those in the folder, from their model cards (`assets.extra/model_card.json`)
and the signature definitions in their `saved_model.pb`.
"""

from __future__ import annotations

import dataclasses
import json
import os

from keras_dense.export.versions import list_versions

CARD_ASSET = os.path.join("assets.extra", "model_card.json")


class DifferentModelError(ValueError):
    """A version of the folder serves another task, class list or signatures."""


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """What one version serves.

    Attributes:
        task: The model card's task (None: no keras-dense model card).
        classes: The card's class names (None: no card).
        signatures: `{signature: {"inputs": {key: dtype}, "outputs": {key: dtype}}}`.
    """

    task: str | None
    classes: tuple[str, ...] | None
    signatures: dict


def read_signatures(version_dir: str | os.PathLike) -> dict:
    """The signature definitions of a SavedModel: names, input and output keys with dtypes.

    Args:
        version_dir: A SavedModel folder.

    Returns:
        `{signature: {"inputs": {key: dtype name}, "outputs": {key: dtype name}}}`; empty
        when it has no readable `saved_model.pb`.
    """
    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(os.fspath(version_dir), "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    try:
        with open(path, "rb") as f:
            saved_model.ParseFromString(f.read())
    except (OSError, ValueError):  # DecodeError is a ValueError
        return {}
    if not saved_model.meta_graphs:
        return {}

    def keys(infos) -> dict:
        return {key: tf.dtypes.as_dtype(info.dtype).name for key, info in sorted(infos.items())}

    return {
        name: {"inputs": keys(sig.inputs), "outputs": keys(sig.outputs)}
        for name, sig in sorted(saved_model.meta_graphs[0].signature_def.items())
        if not name.startswith("__")  # TensorFlow's internal `__saved_model_init_op`
    }


def read_served_model(version_dir: str | os.PathLike) -> ServedModel:
    """What the SavedModel in `version_dir` serves (task and classes from its model card)."""
    task = classes = None
    try:
        with open(os.path.join(os.fspath(version_dir), CARD_ASSET)) as f:
            card = json.load(f)
    except (OSError, ValueError):
        card = None
    if isinstance(card, dict):
        task = card.get("task")
        classes = tuple(card["classes"]) if isinstance(card.get("classes"), list) else None
    return ServedModel(task, classes, read_signatures(version_dir))


def _signature_differences(old: dict, new: dict) -> list[str]:
    found = []
    for name in sorted(set(old) | set(new)):
        if name not in new or name not in old:
            where = "only in the folder's version" if name not in new else "only in this export"
            found.append(f"signature {name} ({where})")
            continue
        for side in ("inputs", "outputs"):
            if old[name][side] != new[name][side]:
                found.append(
                    f"signature {name} {side} {old[name][side]} (this export: {new[name][side]})"
                )
    return found


def differences(served: ServedModel, new: ServedModel) -> list[str]:
    """What differs between a folder's version and a new one, one phrase each."""
    if served.task is None:
        return [f"no keras-dense model card ({CARD_ASSET}), so its task and classes are unknown"]
    found = []
    if served.task != new.task:
        found.append(f"task {served.task!r} (this export: {new.task!r})")
    if served.classes != new.classes:
        old = list(served.classes) if served.classes is not None else None
        found.append(f"classes {old} (this export: {list(new.classes or ())})")
    if new.signatures:
        found.extend(_signature_differences(served.signatures, new.signatures))
    return found


def check_same_model(
    model_dir: str | os.PathLike,
    new: ServedModel,
    versions: list[int] | None = None,
    allow_different_model: bool = False,
) -> None:
    """Refuses a new version of `model_dir` that serves another model than its versions.

    Args:
        model_dir: `ROOT/NAME`.
        new: What the new version serves (`signatures` empty: not compared yet).
        versions: The versions to compare with; None: all in the folder.
        allow_different_model: Do not check.

    Raises:
        DifferentModelError: Naming the folder, the version and what differs.
    """
    if allow_different_model:
        return
    for version in sorted(list_versions(model_dir) if versions is None else versions):
        found = differences(read_served_model(os.path.join(model_dir, str(version))), new)
        if found:
            raise DifferentModelError(
                f"{model_dir}: version {version} serves another model than this export: "
                f"{'; '.join(found)}. TF Serving's labels and clients take the versions of "
                "one folder for one model: export under another name, or pass "
                "--allow-different-model (allow_different_model=True) to add it anyway"
            )
