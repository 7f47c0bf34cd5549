"""Training callbacks: best-model checkpoint, TensorBoard image summaries, CSV history.

`metrics.csv` and the resume checkpoint (`keras_dense.training.backup`) agree about which
epochs finished: an epoch's row is written (atomically, the whole file) only after its
checkpoint, which also holds the epoch's logs; a resumed run reconciles the file with the
checkpoint (`reconcile_history`), dropping rows the checkpoint does not hold and restoring the
row a crash kept from being written, and says so.
"""

from __future__ import annotations

import csv
import glob
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_dense.prediction.palette import colorize
from keras_dense.training.summaries import write_images, write_scalar
from keras_dense.utils.files import atomic_write_bytes, remove_stale_temporaries
from keras_dense.utils.model_card import write_model_card
from keras_dense.utils.normalization import finish, mean_pixel


class RequireSteps(keras.callbacks.Callback):
    """Stops training when an epoch ran no training step, before it is recorded as done.

    An empty epoch (the data ran out before the first batch) would otherwise be saved as
    finished, with an untrained best model and exit status 0.
    """

    def on_epoch_begin(self, epoch, logs=None):
        self.steps = 0

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1

    def on_epoch_end(self, epoch, logs=None):
        if self.steps == 0:
            raise RuntimeError(
                f"epoch {epoch + 1} ran no training step: the training data yielded no batch "
                "(fewer records than training.batch_size, or an empty shard); nothing was saved"
            )


class BestCheckpoint(keras.callbacks.Callback):
    """Saves the model as `.keras` (atomically) whenever the monitored value improves.

    Args:
        path: The `.keras` file.
        monitor: Log key, e.g. "val_mean_iou" or "val_loss".
        mode: "max" or "min".
        best: Best value so far (from a resumed run's history), or None.
        card: The model card written beside the model (`X.json`) with each save.
    """

    def __init__(self, path: str, monitor: str, mode: str, best: float | None = None, card=None):
        super().__init__()
        if mode not in ("max", "min"):
            raise ValueError(f"mode={mode!r}: expected 'max' or 'min'")
        self.path, self.monitor, self.mode, self.card = path, monitor, mode, card
        self.best = best

    def _improves(self, value: float) -> bool:
        if self.best is None or math.isnan(self.best):
            return True
        return value > self.best if self.mode == "max" else value < self.best

    def on_train_begin(self, logs=None):
        # A save interrupted by a crash leaves its temporary file; remove it.
        folder = os.path.dirname(self.path) or "."
        stem = os.path.splitext(os.path.basename(self.path))[0]
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.startswith(f"{stem}.tmp-"):
                    os.remove(os.path.join(folder, name))

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)) or not self._improves(float(value)):
            return
        self.best = float(value)
        stem, _ = os.path.splitext(self.path)
        temporary = f"{stem}.tmp-{os.getpid()}.keras"
        self.model.save(temporary)
        os.replace(temporary, self.path)
        if self.card is not None:
            write_model_card(self.path, {**self.card, "epoch": epoch + 1, self.monitor: value})


def denormalize(images: np.ndarray, normalization: str | None) -> np.ndarray:
    """Inverts `keras_dense.data.normalize`: normalised images back to 0-255 uint8 RGB."""
    channels = images.shape[-1]
    # The normalisation is affine: y = (x - mean) @ M, with M = finish(identity).
    matrix = np.asarray(finish(tf.eye(channels), normalization))
    pixels = images.reshape(-1, channels) @ np.linalg.inv(matrix) + mean_pixel(
        normalization, channels
    )
    return np.clip(pixels.reshape(images.shape), 0, 255).astype(np.uint8)


class ImageSummaries(keras.callbacks.Callback):
    """Writes input, ground truth and prediction images to TensorBoard after each epoch.

    Args:
        log_dir: Folder of the summary files (e.g. `logs/images`).
        images: (N, H, W, C) normalised inputs, a fixed sample.
        masks: (N, h, w) ground truth (h, w: the model's output size).
        normalization: Normalisation of `images` (to show them as RGB).
    """

    def __init__(self, log_dir: str, images, masks, normalization: str | None):
        super().__init__()
        self.log_dir = log_dir
        self.images = np.asarray(images, np.float32)
        self.masks = np.asarray(masks)
        self.normalization = normalization
        self._writer = None

    def on_epoch_end(self, epoch, logs=None):
        if self._writer is None:
            self._writer = tf.summary.create_file_writer(self.log_dir)
        logits = np.asarray(self.model(self.images, training=False))
        predicted = np.argmax(logits, axis=-1)
        inputs = denormalize(self.images, self.normalization)
        if inputs.shape[-1] == 1:
            inputs = np.repeat(inputs, 3, axis=-1)
        with self._writer.as_default():
            write_images("input", inputs, epoch + 1)
            write_images("truth", colorize(self.masks), epoch + 1)
            write_images("prediction", colorize(predicted), epoch + 1)
        self._writer.flush()

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class ScalarSummaries(keras.callbacks.Callback):
    """Writes the epoch logs to TensorBoard: `train/` and `validation/` (the `val_` keys).

    Args:
        log_dir: The run's log folder.
    """

    def __init__(self, log_dir: str):
        super().__init__()
        self.log_dir = log_dir
        self._writers: dict = {}

    def _writer(self, name: str):
        if name not in self._writers:
            self._writers[name] = tf.summary.create_file_writer(os.path.join(self.log_dir, name))
        return self._writers[name]

    def on_epoch_end(self, epoch, logs=None):
        logs = dict(logs or {})
        optimizer = getattr(self.model, "optimizer", None)
        if optimizer is not None and "learning_rate" not in logs:
            logs["learning_rate"] = float(np.asarray(optimizer.learning_rate))
        for key, value in logs.items():
            split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
            with self._writer(split).as_default():
                write_scalar(f"epoch_{name}", float(value), epoch + 1)
        for writer in self._writers.values():
            writer.flush()

    def on_train_end(self, logs=None):
        for writer in self._writers.values():
            writer.close()
        self._writers = {}


def _csv_bytes(header: list[str], rows: list[dict]) -> bytes:
    lines = [",".join(header)]
    lines += [",".join(str(row.get(key, "")) for key in header) for row in rows]
    return ("\n".join(lines) + "\n").encode()


def _csv_value(value) -> str:
    try:
        return repr(float(value))
    except (TypeError, ValueError):
        return str(value)


class MetricsLog(keras.callbacks.Callback):
    """Adds one row per epoch to a CSV file (`epoch` 0-based, then the logs, sorted).

    The whole file is rewritten atomically each epoch, so a crash leaves the old or the new
    file, never a torn row. Place it after `keras_dense.training.backup.EpochBackup`: a row
    then implies its epoch's checkpoint.

    Args:
        csv_path: The file; rows already there (of a resumed run) are kept.
    """

    def __init__(self, csv_path: str):
        super().__init__()
        self.csv_path = csv_path

    def on_train_begin(self, logs=None):
        remove_stale_temporaries(glob.escape(self.csv_path) + ".tmp-*")

    def on_epoch_end(self, epoch, logs=None):
        header, rows = read_csv(self.csv_path)
        row = {"epoch": str(epoch), **{k: _csv_value(v) for k, v in (logs or {}).items()}}
        header = header or ["epoch", *sorted(logs or {})]
        header += [key for key in sorted(row) if key not in header]
        rows = [r for r in rows if r.get("epoch") != str(epoch)] + [row]
        atomic_write_bytes(self.csv_path, _csv_bytes(header, rows))


def read_csv(csv_path: str) -> tuple[list[str], list[dict]]:
    """The header and rows of a CSV file (`([], [])` when the file is missing)."""
    if not os.path.isfile(csv_path):
        return [], []
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def reconcile_history(
    csv_path: str, finished_epochs: int, checkpoint_logs: dict | None
) -> tuple[list[dict], list[str]]:
    """Makes `metrics.csv` hold exactly the epochs the resume checkpoint holds.

    A run stopped between an epoch's checkpoint and its row lacks the row: it is restored from
    the checkpoint's logs. Rows of epochs the checkpoint does not hold (a run stopped before
    saving them, or a file written by an older version) are dropped: those epochs are trained
    again. Unreadable and repeated rows are dropped too.

    Args:
        csv_path: The CSV file.
        finished_epochs: Epochs the checkpoint holds (0: a fresh start).
        checkpoint_logs: The logs of its last epoch, or None.

    Returns:
        `(rows, notes)`: the rows kept (in epoch order) and one line per change made, naming
        the file, the epochs (1-based, as Keras prints them) and why.
    """
    header, rows = read_csv(csv_path)
    notes: list[str] = []
    kept: dict[int, dict] = {}
    dropped, unreadable, repeated = [], 0, []
    for row in rows:
        try:
            epoch = int(row.get("epoch") or "")
        except ValueError:
            unreadable += 1
            continue
        if epoch >= finished_epochs:
            dropped.append(epoch + 1)
        elif epoch in kept:
            repeated.append(epoch + 1)
        else:
            kept[epoch] = row
    if dropped:
        notes.append(
            f"{csv_path}: dropped the rows of epochs {sorted(set(dropped))}: the saved state "
            f"holds {finished_epochs} finished epochs (the run stopped before saving the "
            "others), so they are trained again"
        )
    if unreadable:
        notes.append(f"{csv_path}: dropped {unreadable} unreadable rows (no epoch number)")
    if repeated:
        notes.append(f"{csv_path}: dropped repeated rows of epochs {sorted(set(repeated))}")
    last = finished_epochs - 1
    if finished_epochs and last not in kept and checkpoint_logs:
        kept[last] = {"epoch": str(last), **{k: _csv_value(v) for k, v in checkpoint_logs.items()}}
        header = header or ["epoch", *sorted(checkpoint_logs)]
        header += [key for key in sorted(kept[last]) if key not in header]
        notes.append(
            f"{csv_path}: restored the row of epoch {finished_epochs} from the saved state "
            "(the run stopped after saving the epoch, before writing its row)"
        )
    missing = [e + 1 for e in range(finished_epochs) if e not in kept]
    if missing:
        notes.append(
            f"{csv_path}: no rows for the finished epochs {missing} (the file was edited or "
            "removed); training goes on from the saved state"
        )
    ordered = [kept[e] for e in sorted(kept)]
    if notes and header:
        atomic_write_bytes(csv_path, _csv_bytes(header, ordered))
    elif notes and not ordered and os.path.isfile(csv_path):
        os.remove(csv_path)
    return ordered, notes


def best_in_history(rows: list[dict], monitor: str, mode: str) -> float | None:
    """Best value of `monitor` in CSV rows, or None."""
    values = []
    for row in rows:
        try:
            value = float(row.get(monitor, "nan"))
        except ValueError:
            continue
        if math.isfinite(value):
            values.append(value)
    if not values:
        return None
    return max(values) if mode == "max" else min(values)
