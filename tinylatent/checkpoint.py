"""Checkpoints: everything a training run needs to continue bit for bit, in one file.

A checkpoint is one NumPy ``.npz`` archive (a zip file of ``.npy`` arrays, readable with
``numpy.load`` and no pickle). It holds

* ``params/<name>``: every parameter of the GPT, under its GPT-2 name
  (``params/wte``, ``params/h.0.attn.c_attn.weight``, ...), in the model's dtype;
* ``optimizer/<path>``: every array of the optimiser's ``state_dict()`` (AdamW's
  moment estimates m and v, ...), the nested dict path joined by ``/``;
* ``metadata``: a 0-d unicode array holding one JSON object with the rest:
  the format name and version, the tinylatent version, the step, the model config,
  the train config, the language (its ``to_dict()``), the state of the training
  data's ``numpy.random.Generator`` (``bit_generator.state``), the optimiser state's
  non-array entries, and the last losses.

Why one ``.npz``: parameters and moments are stored as raw arrays, so a float32 weight
comes back with the same bits (JSON would round it); the metadata travels inside the
same file, so a checkpoint can never be separated from the config and language that
give its arrays a meaning; and the zip format stores a CRC-32 of every member, so
``zipfile`` notices a corrupted or truncated file when it reads it back.

Files are written with :func:`tinylatent._io.atomic_write` (a temporary file in the
same folder, fsynced, then renamed over the old one): a crash or Ctrl-C in the middle
of a write leaves the previous checkpoint whole.

The full list of keys is in docs/training.md.
"""
from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from tinylatent import __version__
from tinylatent._io import atomic_write
from tinylatent.backend import to_device, to_host
from tinylatent.gpt import GPT, GPTConfig, param_shapes
from tinylatent.language import Language

FORMAT_NAME = "tinylatent-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_FILENAME = "ckpt.npz"  # the latest checkpoint of a run, inside its output folder

METADATA_KEY = "metadata"
PARAMS_PREFIX = "params/"
OPTIMIZER_PREFIX = "optimizer/"
ARRAY_MARKER = "__array__"  # in the optimiser skeleton: {"__array__": npz key} stands for an array

REQUIRED_METADATA = (
    "format", "format_version", "tinylatent_version", "step", "model_config",
    "train_config", "language", "rng_state", "optimizer_state", "metrics",
)


@dataclass
class Checkpoint:
    """The contents of a checkpoint, on the host.

    Attributes:
        params: name -> NumPy array, in the order of :func:`tinylatent.gpt.param_shapes`.
        optimizer_state: the optimiser's ``state_dict()`` with every array a NumPy array.
        step: the number of optimiser updates made so far.
        model_config: the GPT's shape.
        train_config: the training settings as a plain dict
            (:meth:`tinylatent.train.TrainConfig.from_dict` turns it back into a config).
        language: the language the model was trained on.
        rng_state: ``bit_generator.state`` of the Generator that draws the training windows.
        metrics: the last losses when the checkpoint was written (``train_loss``, ``val_loss``, ...).
        tinylatent_version: the version that wrote the file.
    """

    params: dict
    optimizer_state: dict
    step: int
    model_config: GPTConfig
    train_config: dict
    language: Language
    rng_state: dict
    metrics: dict
    tinylatent_version: str

    def model(self, device: str = "cpu") -> GPT:
        """A :class:`~tinylatent.gpt.GPT` with a copy of these parameters, on ``device``
        (training it changes neither this checkpoint nor another model made from it)."""
        return GPT(self.model_config, {name: to_device(np.array(value), device) for name, value in self.params.items()})

    def generator(self) -> np.random.Generator:
        """A fresh ``numpy.random.Generator`` in the saved state."""
        return generator_from_state(self.rng_state)


# ----------------------------------------------------------------------------------------
# the optimiser's state dict <-> flat arrays + a JSON skeleton
# ----------------------------------------------------------------------------------------

def _is_array(value: Any) -> bool:
    """NumPy arrays and scalars and CuPy arrays are stored as arrays (their exact bits)."""
    return isinstance(value, (np.ndarray, np.generic)) or type(value).__module__.split(".")[0] == "cupy"


def _split_state(state: Any, path: str, arrays: dict) -> Any:
    """Return ``state`` as JSON with each array replaced by ``{"__array__": key}``; the arrays go into ``arrays``.

    A NumPy scalar (``np.float32(0.9)``) is marked ``"scalar": true`` so that it comes back
    as a NumPy scalar of the same dtype, not a 0-d array.
    """
    if _is_array(state):
        key = OPTIMIZER_PREFIX + path
        arrays[key] = np.asarray(to_host(state))
        marker = {ARRAY_MARKER: key}
        if isinstance(state, np.generic):
            marker["scalar"] = True
        return marker
    if isinstance(state, dict):
        for name in state:
            if not isinstance(name, str) or "/" in name or not name:
                raise ValueError(f"optimizer state keys must be non-empty strings without '/'; got {name!r}")
        return {name: _split_state(value, f"{path}/{name}" if path else name, arrays) for name, value in state.items()}
    if isinstance(state, (list, tuple)):
        return [_split_state(value, f"{path}/{i}" if path else str(i), arrays) for i, value in enumerate(state)]
    if state is None or isinstance(state, (bool, int, float, str)):
        return state
    raise ValueError(f"cannot store optimizer state entry {path!r} of type {type(state).__name__}")


def _join_state(skeleton: Any, archive: dict) -> Any:
    """The inverse of :func:`_split_state`: put the arrays back in place of their markers."""
    if isinstance(skeleton, dict):
        if ARRAY_MARKER in skeleton:
            key = skeleton[ARRAY_MARKER]
            if key not in archive:
                raise ValueError(f"the optimizer state refers to the array {key!r}, which the file does not hold")
            array = archive[key]
            return array[()] if skeleton.get("scalar") else array
        return {name: _join_state(value, archive) for name, value in skeleton.items()}
    if isinstance(skeleton, list):
        return [_join_state(value, archive) for value in skeleton]
    return skeleton


# ----------------------------------------------------------------------------------------
# random generator state
# ----------------------------------------------------------------------------------------

def generator_from_state(state: dict) -> np.random.Generator:
    """A Generator whose bit generator (named in ``state["bit_generator"]``) is in ``state``."""
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise ValueError("the random generator state must be a dict with a 'bit_generator' entry")
    name = state["bit_generator"]
    bit_generator_class = getattr(np.random, str(name), None)
    if not (isinstance(bit_generator_class, type) and issubclass(bit_generator_class, np.random.BitGenerator)):
        raise ValueError(f"unknown bit generator {name!r} in the random generator state")
    bit_generator = bit_generator_class()
    try:
        bit_generator.state = state
    except (TypeError, ValueError, KeyError) as exc:
        raise ValueError(f"the random generator state is not a valid {name} state ({exc})") from None
    return np.random.Generator(bit_generator)


# ----------------------------------------------------------------------------------------
# save and load
# ----------------------------------------------------------------------------------------

def save_checkpoint(
    path: str | os.PathLike,
    *,
    params: dict,
    optimizer_state: dict,
    step: int,
    model_config: GPTConfig,
    train_config: dict,
    language: Language,
    rng_state: dict,
    metrics: Optional[dict] = None,
) -> Path:
    """Write a checkpoint to ``path`` atomically and return the path.

    Arrays may live on either device; they are copied to the host. ``train_config`` is a
    plain dict (``TrainConfig.to_dict()``); ``rng_state`` is ``generator.bit_generator.state``.
    """
    expected = param_shapes(model_config)
    if list(params) != list(expected):
        raise ValueError("params must have exactly the names of param_shapes(model_config), in that order")
    arrays = {PARAMS_PREFIX + name: np.asarray(to_host(value)) for name, value in params.items()}
    optimizer_skeleton = _split_state(optimizer_state, "", arrays)
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "tinylatent_version": __version__,
        "step": int(step),
        "model_config": model_config.to_dict(),
        "train_config": train_config,
        "language": language.to_dict(),
        "rng_state": rng_state,
        "optimizer_state": optimizer_skeleton,
        "metrics": dict(metrics or {}),
    }
    # A 0-d unicode array: stored as plain .npy, loadable without pickle.
    arrays[METADATA_KEY] = np.array(json.dumps(metadata, allow_nan=True))
    return atomic_write(path, lambda handle: np.savez(handle, **arrays), mode="wb")


def _read_archive(path: Path) -> dict:
    """Every member of the ``.npz`` as a NumPy array, read eagerly.

    Reading every member in full is what makes zipfile check each CRC-32, so a flipped
    byte anywhere is found here and not later. Any failure becomes one ValueError.
    """
    if path.is_file() and not zipfile.is_zipfile(path):   # a .npy, text, pickle, ...: np.load's own errors mislead
        raise ValueError(f"{path} is not a readable tinylatent checkpoint (corrupted or truncated?): "
                         "a checkpoint is a .npz (zip) archive, and this file is not one")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, zipfile.LargeZipFile) as exc:
        raise ValueError(
            f"{path} is not a readable tinylatent checkpoint (corrupted or truncated?): "
            f"{type(exc).__name__}: {exc}"
        ) from None


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read and validate a checkpoint written by :func:`save_checkpoint`.

    Raises ``FileNotFoundError`` if there is no file, and ``ValueError`` saying what is
    wrong for a corrupted or truncated file, a missing key, another format version,
    parameters whose names, shapes or dtypes do not fit the model config, or a
    non-finite parameter.
    """
    path = Path(path)
    archive = _read_archive(path)
    if METADATA_KEY not in archive:
        raise ValueError(f"{path} has no {METADATA_KEY!r} entry: it is not a tinylatent checkpoint")
    try:
        metadata = json.loads(str(archive[METADATA_KEY][()]))
    except (json.JSONDecodeError, TypeError, IndexError) as exc:
        raise ValueError(f"{path}: the metadata is not valid JSON ({exc})") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a tinylatent checkpoint: its metadata 'format' is not {FORMAT_NAME!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is checkpoint format version {metadata.get('format_version')!r}; "
            f"this tinylatent ({__version__}) reads version {FORMAT_VERSION}"
        )
    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"{path}: the metadata is missing the key(s) {', '.join(missing)}")
    step = metadata["step"]
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"{path}: 'step' must be a non-negative integer; got {step!r}")
    if not isinstance(metadata["train_config"], dict):
        raise ValueError(f"{path}: 'train_config' must be a JSON object")
    if not isinstance(metadata["model_config"], dict):
        raise ValueError(f"{path}: 'model_config' must be a JSON object")
    try:
        model_config = GPTConfig.from_dict(metadata["model_config"])
    except TypeError as exc:
        raise ValueError(f"{path}: bad model config ({exc})") from None
    language = Language.from_dict(metadata["language"])
    if language.vocab_size != model_config.vocab_size:
        raise ValueError(
            f"{path}: the language has {language.vocab_size} tokens but the model config "
            f"has vocab_size {model_config.vocab_size}"
        )
    generator_from_state(metadata["rng_state"])  # validates the state

    params = {}
    for name, shape in param_shapes(model_config).items():
        key = PARAMS_PREFIX + name
        if key not in archive:
            raise ValueError(f"{path}: parameter {name!r}, which the model config needs, is missing")
        array = archive[key]
        if tuple(array.shape) != shape:
            raise ValueError(
                f"{path}: parameter {name!r} has shape {tuple(array.shape)} but the model config "
                f"needs {shape}: the parameters do not match the config"
            )
        if str(array.dtype) != model_config.dtype:
            raise ValueError(f"{path}: parameter {name!r} has dtype {array.dtype}; the model config says {model_config.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"{path}: parameter {name!r} contains NaN or inf")
        params[name] = array
    extra = sorted(key[len(PARAMS_PREFIX):] for key in archive if key.startswith(PARAMS_PREFIX)
                   and key[len(PARAMS_PREFIX):] not in params)
    if extra:
        raise ValueError(f"{path}: parameters {extra} are not part of the model config: the parameters do not match the config")
    optimizer_state = _join_state(metadata["optimizer_state"], archive)
    return Checkpoint(
        params=params,
        optimizer_state=optimizer_state,
        step=step,
        model_config=model_config,
        train_config=metadata["train_config"],
        language=language,
        rng_state=metadata["rng_state"],
        metrics=metadata["metrics"] if isinstance(metadata["metrics"], dict) else {},
        tinylatent_version=str(metadata["tinylatent_version"]),
    )
