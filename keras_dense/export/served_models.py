"""What a TF Serving model folder serves: one model, in successive versions.

TF Serving's version labels (`stable`, `canary`, see `keras_dense.serving.configs`) and clients
that ask for "the latest version" assume every version of `ROOT/NAME` is the same model
(retrained, say). `check_same_model` compares a new version with the one it succeeds, the
newest below its number, from their model cards (`assets.extra/model_card.json`) and the
signature definitions in their `saved_model.pb`:

- the task and the class list must be the same;
- every signature of that version must still be there, with the same inputs (names, dtypes,
  shapes: a dimension it left free stays free) and its outputs, of the same dtypes and ranks.
  New signatures and new outputs (`--tta` adds `probabilities`) are compatible: every request
  that the older version answered is still answered.

Only that version counts: after a deliberate change (`allow_different_model`) the folder
serves the new model, and its next versions are compared with it.
"""

from __future__ import annotations

import dataclasses
import json
import os

from keras_dense.export.versions import list_versions

CARD_ASSET = os.path.join("assets.extra", "model_card.json")


class DifferentModelError(ValueError):
    """A version of the folder serves another task, class list or signatures."""


class DamagedSavedModelError(ValueError):
    """A version's `saved_model.pb` cannot be parsed as a SavedModel."""


@dataclasses.dataclass(frozen=True)
class TensorDescription:
    """One input or output of a signature.

    Attributes:
        dtype: The dtype's name, e.g. `float32`.
        shape: The dimensions (None: free), or None when even the rank is unknown.
    """

    dtype: str
    shape: tuple[int | None, ...] | None

    def describe(self, dims: bool) -> str:
        """`float32 [?, ?, ?, 3]` (with `dims`) or `float32, rank 4`."""
        if self.shape is None:
            return f"{self.dtype}, unknown rank"
        if not dims:
            return f"{self.dtype}, rank {len(self.shape)}"
        return f"{self.dtype} [{', '.join('?' if d is None else str(d) for d in self.shape)}]"

    def accepts(self, older: TensorDescription) -> bool:
        """Whether every tensor that fits `older` (an input) also fits this one."""
        if self.dtype != older.dtype:
            return False
        if self.shape is None:
            return True
        if older.shape is None or len(self.shape) != len(older.shape):
            return False
        return all(new is None or new == old for new, old in zip(self.shape, older.shape))

    def same_kind(self, older: TensorDescription) -> bool:
        """Whether an output has the dtype and rank it had in `older`."""
        rank = None if self.shape is None else len(self.shape)
        older_rank = None if older.shape is None else len(older.shape)
        return self.dtype == older.dtype and rank == older_rank


@dataclasses.dataclass(frozen=True)
class ServedModel:
    """What one version serves.

    Attributes:
        task: The model card's task (None: no keras-dense model card).
        classes: The card's class names (None: no card).
        signatures: `{signature: {"inputs": {key: TensorDescription}, "outputs": {...}}}`;
            empty when not known (not built yet, or no readable `saved_model.pb`).
    """

    task: str | None
    classes: tuple[str, ...] | None
    signatures: dict


def read_signatures(version_dir: str | os.PathLike) -> dict:
    """The signature definitions of a SavedModel: names, input and output keys, dtypes, shapes.

    Args:
        version_dir: A SavedModel folder.

    Returns:
        `{signature: {"inputs": {key: TensorDescription}, "outputs": {...}}}`; empty when it
        has no readable `saved_model.pb`.

    Raises:
        DamagedSavedModelError: `saved_model.pb` is there but is not a SavedModel protobuf
            (naming the file).
    """
    import tensorflow as tf
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    path = os.path.join(os.fspath(version_dir), "saved_model.pb")
    saved_model = saved_model_pb2.SavedModel()
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return {}
    try:
        # protobuf's DecodeError is not a ValueError (it derives from Exception).
        saved_model.ParseFromString(data)
    except DecodeError as err:
        raise DamagedSavedModelError(
            f"{path}: cannot be read as a SavedModel ({err}): a damaged or unfinished export; "
            "remove that version folder or export it again"
        ) from None
    if not saved_model.meta_graphs:
        return {}

    def shape(info) -> tuple[int | None, ...] | None:
        if info.tensor_shape.unknown_rank:
            return None
        return tuple(None if d.size < 0 else int(d.size) for d in info.tensor_shape.dim)

    def keys(infos) -> dict:
        return {
            key: TensorDescription(tf.dtypes.as_dtype(info.dtype).name, shape(info))
            for key, info in sorted(infos.items())
        }

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


def describe_signatures(signatures: dict) -> dict:
    """`read_signatures` of concrete functions before they are saved.

    The keys are those `tf.saved_model.save` gives them: an input's `TensorSpec` name, an
    output's key in the returned dict (`output_N` for the N-th of other structures).

    Args:
        signatures: `{name: tf ConcreteFunction}` as passed to `tf.saved_model.save`.
    """
    import tensorflow as tf

    def description(value) -> TensorDescription:
        rank = value.shape.rank
        return TensorDescription(value.dtype.name, None if rank is None else tuple(value.shape))

    found = {}
    for name, function in sorted(signatures.items()):
        inputs = tf.nest.flatten(function.structured_input_signature)
        outputs = function.structured_outputs
        if not isinstance(outputs, dict):
            outputs = {f"output_{i}": t for i, t in enumerate(tf.nest.flatten(outputs))}
        found[name] = {
            "inputs": {spec.name: description(spec) for spec in inputs},
            "outputs": {key: description(outputs[key]) for key in sorted(outputs)},
        }
    return found


def _signature_changes(older: dict, newer: dict, older_name: str, newer_name: str) -> list[str]:
    """What of `older`'s signatures `newer` no longer serves, one phrase each."""
    found = []
    for name in sorted(older):
        if name not in newer:
            found.append(f"signature {name} of {older_name} is missing in {newer_name}")
            continue
        old_inputs, new_inputs = older[name]["inputs"], newer[name]["inputs"]
        for key in sorted(set(old_inputs) | set(new_inputs)):
            if key not in new_inputs:
                found.append(
                    f"{name} input {key!r} ({old_inputs[key].describe(True)}) is missing in "
                    f"{newer_name}"
                )
            elif key not in old_inputs:
                found.append(
                    f"{name} input {key!r} ({new_inputs[key].describe(True)}) is new in "
                    f"{newer_name}: requests made for {older_name} lack it"
                )
            elif not new_inputs[key].accepts(old_inputs[key]):
                found.append(
                    f"{name} input {key!r} {old_inputs[key].describe(True)} ({newer_name}: "
                    f"{new_inputs[key].describe(True)})"
                )
        old_outputs, new_outputs = older[name]["outputs"], newer[name]["outputs"]
        for key in sorted(old_outputs):
            if key not in new_outputs:
                found.append(
                    f"{name} output {key!r} ({old_outputs[key].describe(False)}) is missing in "
                    f"{newer_name}"
                )
            elif not new_outputs[key].same_kind(old_outputs[key]):
                found.append(
                    f"{name} output {key!r} {old_outputs[key].describe(False)} ({newer_name}: "
                    f"{new_outputs[key].describe(False)})"
                )
    return found


def differences(
    older: ServedModel,
    newer: ServedModel,
    older_name: str = "the folder's version",
    newer_name: str = "this export",
) -> list[str]:
    """Why `newer` cannot succeed `older` as the same model, one phrase each (empty: it can).

    Task and classes must be equal; signatures are compared when both are known (see the
    module docstring): what `newer` adds is compatible, what it drops or changes is not.
    """
    for side, name in ((older, older_name), (newer, newer_name)):
        if side.task is None:
            return [
                f"{name} has no keras-dense model card ({CARD_ASSET}), so its task and classes "
                "are unknown"
            ]
    found = []
    if older.task != newer.task:
        found.append(f"task {older.task!r} ({newer_name}: {newer.task!r})")
    if older.classes != newer.classes:
        old = list(older.classes) if older.classes is not None else None
        found.append(f"classes {old} ({newer_name}: {list(newer.classes or ())})")
    if older.signatures and newer.signatures:
        found.extend(_signature_changes(older.signatures, newer.signatures, older_name, newer_name))
    return found


def check_same_model(
    model_dir: str | os.PathLike,
    new: ServedModel,
    version: int | None = None,
    allow_different_model: bool = False,
) -> None:
    """Refuses a new version of `model_dir` that serves another model than the one it succeeds.

    The new version is compared with the newest version below its number (a version numbered
    below all others, with the oldest, which then succeeds it); the folder's other versions do
    not count (see the module docstring).

    Args:
        model_dir: `ROOT/NAME`.
        new: What the new version serves (`signatures` empty: not compared yet).
        version: The new version's number; None: after the newest.
        allow_different_model: Do not check.

    Raises:
        DifferentModelError: Naming the folder, the version compared and what differs.
    """
    if allow_different_model:
        return
    existing = [v for v in list_versions(model_dir) if v != version]
    if not existing:
        return
    below = [v for v in existing if version is None or v < version]
    other = max(below) if below else min(existing)
    served = read_served_model(os.path.join(model_dir, str(other)))
    if below:
        found = differences(served, new, f"version {other}", "this export")
    else:
        found = differences(new, served, "this export", f"version {other}")
    if found:
        raise DifferentModelError(
            f"{model_dir}: version {other} serves another model than this export: "
            f"{'; '.join(found)}. TF Serving's labels and clients take the versions of "
            "one folder for one model: export under another name, or pass "
            "--allow-different-model (allow_different_model=True) to add it anyway"
        )
