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

One function, :func:`_checked_contents`, says what a checkpoint may hold. ``load_checkpoint``
runs it on what it read; ``save_checkpoint`` runs it on exactly what it is about to write
(the metadata after its JSON round trip) and writes nothing if it fails, so every file
``save_checkpoint`` writes is one that ``load_checkpoint`` reads back with the same values.
(To resume, :func:`tinylatent.train.train` also needs the optimiser state to be at ``step``.)

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
from tinylatent._checks import is_integer, is_real
from tinylatent._io import atomic_write, parse_json
from tinylatent.backend import to_device, to_host
from tinylatent.gpt import GPT, GPTConfig, param_shapes
from tinylatent.language import Language
from tinylatent.optim import AdamW

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
        optimizer_state: the optimiser's (AdamW's) ``state_dict()`` with every array a NumPy array.
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
            if not isinstance(key, str) or key not in archive:
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

BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")   # NumPy's (BitGenerator is their abstract base)

# NumPy's state setters take these read positions without a range check, and a position
# outside the buffer reads memory past it: wrong numbers, or a crash (MT19937 pos -1, Philox buffer_pos -10**7).
BUFFER_POSITIONS = {"MT19937": (("state", "pos"), 624), "Philox": (("buffer_pos",), 4)}   # name -> (path, largest)


def _check_buffer_position(name: str, state: dict) -> None:
    """A ValueError for a read position of an MT19937 or Philox state outside its buffer
    (a missing one is left to NumPy's setter, which reports it)."""
    if name not in BUFFER_POSITIONS:
        return
    (*parents, key), largest = BUFFER_POSITIONS[name]
    holder = state
    for parent in parents:
        holder = holder.get(parent) if isinstance(holder, dict) else None
    if isinstance(holder, dict) and key in holder:
        position = holder[key]
        if not (is_integer(position) and 0 <= position <= largest):
            raise ValueError(f"the random generator state is not a valid {name} state: its {key!r} must be "
                             f"an integer in 0..{largest}; got {position!r}")


def generator_from_state(state: dict) -> np.random.Generator:
    """A Generator whose bit generator (named in ``state["bit_generator"]``, one of
    ``BIT_GENERATORS``) is in ``state``; a ValueError for every state that is not one."""
    if not isinstance(state, dict) or "bit_generator" not in state:
        raise ValueError("the random generator state must be a dict with a 'bit_generator' entry")
    name = state["bit_generator"]
    if name not in BIT_GENERATORS:
        raise ValueError(f"unknown bit generator {name!r} in the random generator state; "
                         f"allowed: {', '.join(BIT_GENERATORS)}")
    _check_buffer_position(name, state)
    bit_generator = getattr(np.random, name)()
    try:
        bit_generator.state = state
    # what NumPy's setters raise for a missing entry, a short key, a number out of range, ...
    except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
        raise ValueError(f"the random generator state is not a valid {name} state ({type(exc).__name__}: {exc})") from None
    return np.random.Generator(bit_generator)


# ----------------------------------------------------------------------------------------
# what a checkpoint may hold: one check, for save and load
# ----------------------------------------------------------------------------------------

def _as_json(value: Any, where: str) -> Any:
    """``value`` in plain JSON types, or a ``ValueError`` naming ``where``.

    NumPy (and CuPy) numbers and arrays become the Python numbers and lists they hold
    (metrics and configs often come as ``np.float32``, and the ``json`` module refuses
    them); tuples become lists. Dict keys must be strings: JSON would silently turn
    ``{1: ...}`` into ``{"1": ...}``. Anything else cannot be stored.

    Unlike :func:`tinylatent._io.json_ready` (for reports) it refuses rather than converts: a
    non-string key is an error, and NaN stays NaN (``json.dumps(allow_nan=True)``: only
    tinylatent reads this JSON back, and a NaN metric means "not measured").
    """
    if _is_array(value):
        return _as_json(np.asarray(to_host(value)).tolist(), where)
    if isinstance(value, dict):
        for key in value:
            if not isinstance(key, str):
                raise ValueError(f"{where} keys must be strings; got {key!r}")
        return {key: _as_json(item, f"{where}[{key!r}]") for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(item, f"{where}[{i}]") for i, item in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"{where} is a {type(value).__name__}, which a checkpoint cannot store; allowed: "
                     "numbers, strings, True/False, None, and lists and dicts of them")


def _checked_contents(metadata: dict, arrays: dict) -> Checkpoint:
    """The checkpoint that ``metadata`` (a JSON object, as ``json.loads`` gives it) and
    ``arrays`` (npz key -> NumPy array) describe, or a ``ValueError`` saying what is wrong.

    The one statement of what a checkpoint may hold: :func:`load_checkpoint` calls it on
    what it read, :func:`save_checkpoint` on what it is about to write. The format name and
    version are :func:`load_checkpoint`'s to check (``save_checkpoint`` always writes its own).
    """
    from tinylatent.train import TrainConfig   # here, not at the top: tinylatent.train imports this module

    missing = [key for key in REQUIRED_METADATA if key not in metadata]
    if missing:
        raise ValueError(f"the metadata is missing the key(s) {', '.join(missing)}")
    step = metadata["step"]
    if not is_integer(step) or step < 0:
        raise ValueError(f"'step' must be a non-negative integer; got {step!r}")

    # the configs: their own from_dict checks, with their messages
    if not isinstance(metadata["model_config"], dict):
        raise ValueError("'model_config' must be a JSON object (GPTConfig.to_dict())")
    try:
        model_config = GPTConfig.from_dict(metadata["model_config"])
    except TypeError as exc:
        raise ValueError(f"bad model config ({exc})") from None
    train_config = metadata["train_config"]
    if not isinstance(train_config, dict):
        raise ValueError(f"'train_config' must be a JSON object (TrainConfig.to_dict()); got {type(train_config).__name__}")
    try:
        TrainConfig.from_dict(train_config).resolved(model_config)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad train config: {exc}") from None
    language = Language.from_dict(metadata["language"])
    if language.vocab_size != model_config.vocab_size:
        raise ValueError(
            f"the language has {language.vocab_size} tokens but the model config "
            f"has vocab_size {model_config.vocab_size}"
        )
    generator_from_state(metadata["rng_state"])  # validates the state
    metrics = metadata["metrics"]
    if not isinstance(metrics, dict):
        raise ValueError(f"'metrics' must be a JSON object of name -> number; got {type(metrics).__name__}")
    for name, value in metrics.items():
        if value is not None and not is_real(value):
            raise ValueError(f"metric {name!r} must be a number or None; got {value!r}")

    # the arrays: exactly the parameters the model config needs, and the optimiser's moments for them
    n_arrays = sum(key.startswith(PARAMS_PREFIX) for key in arrays)
    if model_config.n_layer > n_arrays:   # before param_shapes lists them: n_layer = 10**30 would fill the memory
        raise ValueError(f"the model config has n_layer {model_config.n_layer} but the file holds only {n_arrays} "
                         "parameter arrays, fewer than one per block: the parameters do not match the config")
    params = {}
    for name, shape in param_shapes(model_config).items():
        key = PARAMS_PREFIX + name
        if key not in arrays:
            raise ValueError(f"parameter {name!r}, which the model config needs, is missing")
        array = arrays[key]
        if tuple(array.shape) != shape:
            raise ValueError(
                f"parameter {name!r} has shape {tuple(array.shape)} but the model config "
                f"needs {shape}: the parameters do not match the config"
            )
        if str(array.dtype) != model_config.dtype:
            raise ValueError(f"parameter {name!r} has dtype {array.dtype}; the model config says {model_config.dtype}")
        if not np.all(np.isfinite(array)):
            raise ValueError(f"parameter {name!r} contains NaN or inf")
        params[name] = array
    extra = sorted(key[len(PARAMS_PREFIX):] for key in arrays if key.startswith(PARAMS_PREFIX)
                   and key[len(PARAMS_PREFIX):] not in params)
    if extra:
        raise ValueError(f"parameters {extra} are not part of the model config: the parameters do not match the config")
    optimizer_state = _join_state(metadata["optimizer_state"], arrays)
    AdamW().load_state_dict(optimizer_state)   # AdamW's checks of its state: keys, step, moments, hyperparameters
    _check_moments(optimizer_state, params)
    return Checkpoint(
        params=params,
        optimizer_state=optimizer_state,
        step=step,
        model_config=model_config,
        train_config=train_config,
        language=language,
        rng_state=metadata["rng_state"],
        metrics=metrics,
        tinylatent_version=str(metadata["tinylatent_version"]),
    )


def _check_moments(optimizer_state: dict, params: dict) -> None:
    """What AdamW.load_state_dict leaves unchecked (it knows no parameters): each moment belongs
    to a parameter, has its shape and is finite (v, a mean of squares, also ≥ 0), and after a
    step every parameter has its moments: AdamW would start missing ones at 0, and the resumed
    run would differ from the uninterrupted one."""
    for moment in ("m", "v"):
        for name, value in optimizer_state[moment].items():
            if name not in params:
                raise ValueError(f"optimizer state: {moment}[{name!r}] is the moment of no parameter of the model config")
            if np.shape(value) != params[name].shape:
                raise ValueError(f"optimizer state: {moment}[{name!r}] has shape {np.shape(value)}; "
                                 f"its parameter has {params[name].shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"optimizer state: {moment}[{name!r}] contains NaN or inf; moments must be finite")
            if moment == "v" and np.any(value < 0):
                raise ValueError(f"optimizer state: v[{name!r}] has a negative entry; a second moment "
                                 "(a running mean of squared gradients) is ≥ 0")
    missing = [name for name in params if name not in optimizer_state["m"]]
    if optimizer_state["step"] > 0 and missing:
        raise ValueError(f"optimizer state: it is at step {optimizer_state['step']} but has no moments for "
                         f"{missing}; after a step every parameter has them")


def _checked_path(path: Any) -> Path:
    """``path`` as a Path, or a ``ValueError`` for what names no file (None, "", a number, ...)."""
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else None
    if not isinstance(name, str):
        raise ValueError(f"a checkpoint path must be a str or os.PathLike naming a file; got {type(path).__name__}")
    if not name:
        raise ValueError("the checkpoint path is empty; give a file name such as OUT/ckpt.npz")
    return Path(name)


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
    plain dict (``TrainConfig.to_dict()``); ``rng_state`` is ``generator.bit_generator.state``;
    NumPy numbers in ``train_config``, ``rng_state`` and ``metrics`` are stored as the Python
    numbers they hold.

    Raises ``ValueError``, before anything is written, for contents that :func:`load_checkpoint`
    would refuse (a negative or non-integer ``step``, a NaN parameter, a language of another
    vocabulary, an invalid train config, ...): the same check runs on both sides.
    """
    path = _checked_path(path)
    try:
        if not isinstance(model_config, GPTConfig):
            raise ValueError(f"model_config must be a GPTConfig; got {type(model_config).__name__}")
        if not isinstance(language, Language):
            raise ValueError(f"language must be a tinylatent Language; got {type(language).__name__}")
        if not isinstance(params, dict) or list(params) != list(param_shapes(model_config)):
            raise ValueError("params must be a dict with exactly the names of param_shapes(model_config), in that order")
        arrays = {PARAMS_PREFIX + name: np.asarray(to_host(value)) for name, value in params.items()}
        optimizer_skeleton = _split_state(optimizer_state, "", arrays)
        metadata = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "tinylatent_version": __version__,
            "step": _as_json(step, "step"),
            "model_config": model_config.to_dict(),
            "train_config": _as_json(train_config, "train_config"),
            "language": language.to_dict(),
            "rng_state": _as_json(rng_state, "rng_state"),
            "optimizer_state": optimizer_skeleton,
            "metrics": _as_json({} if metrics is None else metrics, "metrics"),
        }
        text = json.dumps(metadata, allow_nan=True)
        # what load_checkpoint will see, checked as it will check it
        _checked_contents(parse_json(text, "the metadata"), arrays)
    except RecursionError:
        raise ValueError(f"cannot save a checkpoint to {path}: the train config, metrics or generator state "
                         "nests lists or dicts too deeply") from None
    except ValueError as exc:
        raise ValueError(f"cannot save a checkpoint to {path}: {exc}") from None
    # A 0-d unicode array: stored as plain .npy, loadable without pickle.
    arrays[METADATA_KEY] = np.array(text)
    return atomic_write(path, lambda handle: np.savez(handle, **arrays), mode="wb")


def _read_archive(path: Path) -> dict:
    """Every member of the ``.npz`` as a NumPy array, read eagerly.

    Reading every member in full is what makes zipfile check each CRC-32, so a flipped
    byte anywhere is found here and not later. Any failure becomes one ValueError. Arrays come
    back in C order (a Fortran-ordered one, e.g. from ``np.savez`` of ``np.asfortranarray``, is
    copied), since AdamW updates parameters and moments in place through flat views.
    """
    if path.is_dir():                    # as load_language says it: the OS's "Is a directory" names no kind of file
        raise ValueError(f"{path} is a folder, not a checkpoint file")
    if path.is_file() and not zipfile.is_zipfile(path):   # a .npy, text, pickle, ...: np.load's own errors mislead
        raise ValueError(f"{path} is not a readable tinylatent checkpoint (corrupted or truncated?): "
                         "a checkpoint is a .npz (zip) archive, and this file is not one")
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: np.require(archive[key], requirements="C") for key in archive.files}
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
    wrong for a path that names no file (None, a folder), a corrupted or truncated file,
    a missing key, another format version, a step that is not a non-negative integer, a
    model or train config their own checks refuse, a language of another vocabulary, an
    invalid generator state, metrics that are not numbers, parameters whose names, shapes
    or dtypes do not fit the model config, a non-finite parameter, or an optimiser state
    that AdamW would refuse or whose moments do not fit the parameters (:func:`_check_moments`);
    also for metadata nested too deeply or holding an integer too large for a float64.
    Arrays come back in C order.
    """
    path = _checked_path(path)
    archive = _read_archive(path)
    if METADATA_KEY not in archive:
        raise ValueError(f"{path} has no {METADATA_KEY!r} entry: it is not a tinylatent checkpoint")
    try:
        text = str(archive[METADATA_KEY][()])
    except IndexError as exc:                                   # an array that is not 0-d
        raise ValueError(f"{path}: the metadata is not one JSON text ({exc})") from None
    metadata = parse_json(text, f"{path}: the metadata")
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a tinylatent checkpoint: its metadata 'format' is not {FORMAT_NAME!r}")
    if metadata.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is checkpoint format version {metadata.get('format_version')!r}; "
            f"this tinylatent ({__version__}) reads version {FORMAT_VERSION}"
        )
    try:
        return _checked_contents(metadata, archive)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
