"""Training callbacks: best-model checkpoint, TensorBoard image summaries, CSV history."""

from __future__ import annotations

import csv
import math
import os

import keras
import numpy as np
import tensorflow as tf

from keras_dense.prediction.palette import colorize
from keras_dense.training.summaries import write_images, write_scalar
from keras_dense.utils.files import atomic_write_bytes
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


def read_history(csv_path: str) -> list[dict]:
    """Rows of a CSVLogger file as dicts (empty when the file is missing)."""
    if not os.path.isfile(csv_path):
        return []
    with open(csv_path, newline="") as f:
        return list(csv.DictReader(f))


def trim_history(csv_path: str, finished_epochs: int) -> list[dict]:
    """Drops CSV rows of epochs not in the restored state (a crash between the two writes).

    Args:
        csv_path: The CSVLogger file.
        finished_epochs: Epochs the restored state holds; rows with `epoch >= it` go.

    Returns:
        The rows kept.
    """
    rows = read_history(csv_path)
    kept = [row for row in rows if int(row["epoch"]) < finished_epochs]
    if len(kept) != len(rows) and rows:
        lines = [",".join(rows[0].keys())]
        lines += [",".join(str(row[key]) for key in rows[0]) for row in kept]
        atomic_write_bytes(csv_path, ("\n".join(lines) + "\n").encode())
    return kept


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
