"""Crash-safe training state: weights + optimizer after every epoch, restored on restart.

Like `keras.callbacks.BackupAndRestore`, but every file is written under a temporary name
and renamed, and one small JSON (`state.json`) names the epoch and its weight file, so a
process killed at any instant (`kill -9`) leaves either the previous or the new state, never
a torn one. The trainer restores the state before `fit` and passes `initial_epoch`. The
state also holds the epoch's logs, from which `metrics.csv` (written after it) is completed
when a crash came between the two.
"""

from __future__ import annotations

import json
import os

import keras

from keras_dense.utils.files import atomic_write_bytes

STATE_FILE = "state.json"


def read_state(backup_dir: str) -> dict | None:
    """The last saved state `{"epoch": E, "weights": file, "logs": {...}}`, or None.

    `logs` (the epoch's metrics) is missing in states saved by older versions.
    """
    path = os.path.join(backup_dir, STATE_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        state = json.load(f)
    weights = os.path.join(backup_dir, state["weights"])
    if not os.path.isfile(weights):
        raise ValueError(f"{path}: names {state['weights']}, which is missing")
    return state


def restore(model: keras.Model, backup_dir: str) -> int:
    """Loads the last saved weights and optimizer state into a compiled model.

    Args:
        model: The compiled model (same architecture and optimizer as the saved run).
        backup_dir: The backup folder.

    Returns:
        The number of finished epochs (0 when there is no state: a fresh start).
    """
    state = read_state(backup_dir)
    if state is None:
        return 0
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    model.load_weights(os.path.join(backup_dir, state["weights"]))
    return int(state["epoch"])


def _json_logs(logs: dict | None) -> dict:
    values = {}
    for key, value in (logs or {}).items():
        try:
            values[key] = float(value)
        except (TypeError, ValueError):
            continue
    return values


class EpochBackup(keras.callbacks.Callback):
    """Saves weights and optimizer state after every epoch, atomically.

    Args:
        backup_dir: Folder of the state (created when missing).
        keep: Number of epoch weight files kept (older ones are removed).
        run: JSON-ready facts about the run saved with every state (e.g. `classes`), for
            the checks of a resume.
    """

    def __init__(self, backup_dir: str, keep: int = 1, run: dict | None = None):
        super().__init__()
        self.backup_dir = backup_dir
        self.keep = max(int(keep), 1)
        self.run = dict(run or {})

    def on_train_begin(self, logs=None):
        # Files of a save interrupted by a crash (they never got their final name).
        if os.path.isdir(self.backup_dir):
            for name in os.listdir(self.backup_dir):
                if name.startswith("tmp-") or ".tmp-" in name:
                    os.remove(os.path.join(self.backup_dir, name))

    def on_epoch_end(self, epoch, logs=None):
        os.makedirs(self.backup_dir, exist_ok=True)
        name = f"epoch-{epoch + 1:05d}.weights.h5"
        final = os.path.join(self.backup_dir, name)
        temporary = os.path.join(self.backup_dir, f"tmp-{os.getpid()}-{name}")
        self.model.save_weights(temporary, overwrite=True)
        os.replace(temporary, final)
        state = {**self.run, "epoch": epoch + 1, "weights": name, "logs": _json_logs(logs)}
        atomic_write_bytes(
            os.path.join(self.backup_dir, STATE_FILE), json.dumps(state).encode() + b"\n"
        )
        saved = sorted(
            f for f in os.listdir(self.backup_dir) if f.startswith("epoch-") and f != name
        )
        for old in saved[: max(len(saved) - self.keep + 1, 0)]:
            os.remove(os.path.join(self.backup_dir, old))
