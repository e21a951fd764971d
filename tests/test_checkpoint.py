"""Checkpoints: an exact round trip, and a clear ValueError for every way a file can be wrong."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from tinylatent import __version__
from tinylatent.checkpoint import (
    FORMAT_VERSION, METADATA_KEY, generator_from_state, load_checkpoint, save_checkpoint,
)
from tinylatent.gpt import GPT, GPTConfig
from tinylatent.language import random_language
from tinylatent.optim import AdamW


def make_state(seed: int = 0) -> dict:
    """The keyword arguments of save_checkpoint for a tiny model after two AdamW steps."""
    language = random_language(n_intentions=2, n_letters=4, letters_per_intention=2, message_length=4, seed=0)
    config = GPTConfig(vocab_size=language.vocab_size, context_length=8, n_layer=1, n_head=2, d_model=16)
    rng = np.random.default_rng(seed)
    model = GPT.create(config, rng)
    optimizer = AdamW()
    for _ in range(2):
        idx = rng.integers(0, language.vocab_size, size=(3, 8))
        _, grads = model.loss_and_grads(idx, np.roll(idx, -1, axis=1))
        optimizer.step(model.params, grads, lr=1e-3)
    return dict(params=model.params, optimizer_state=optimizer.state_dict(), step=2, model_config=config,
                train_config={"steps": 10, "batch_size": 3}, language=language,
                rng_state=rng.bit_generator.state, metrics={"train_loss": 1.25, "val_loss": 1.5})


def rewrite(path, edit) -> None:
    """Load the raw archive, let ``edit(arrays, metadata)`` change it, and save it back."""
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    metadata = json.loads(str(arrays.pop(METADATA_KEY)[()]))
    edit(arrays, metadata)
    arrays[METADATA_KEY] = np.array(json.dumps(metadata))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.fixture
def saved(tmp_path):
    state = make_state()
    path = save_checkpoint(tmp_path / "ckpt.npz", **state)
    return path, state


def test_round_trip_is_exact(saved):
    path, state = saved
    checkpoint = load_checkpoint(path)
    assert checkpoint.step == 2
    assert checkpoint.tinylatent_version == __version__
    assert checkpoint.model_config == state["model_config"]
    assert checkpoint.train_config == state["train_config"]
    assert checkpoint.metrics == state["metrics"]
    assert list(checkpoint.params) == list(state["params"])
    for name, value in state["params"].items():
        assert checkpoint.params[name].dtype == value.dtype and np.array_equal(checkpoint.params[name], value)
    saved_optimizer = state["optimizer_state"]
    assert checkpoint.optimizer_state["step"] == saved_optimizer["step"] == 2
    assert tuple(checkpoint.optimizer_state["betas"]) == saved_optimizer["betas"]
    for moment in ("m", "v"):
        for name, value in saved_optimizer[moment].items():
            assert np.array_equal(checkpoint.optimizer_state[moment][name], value)
    np.testing.assert_allclose(checkpoint.language.letter_transition, state["language"].letter_transition,
                               rtol=0, atol=1e-15)
    # the data generator continues with exactly the numbers the original would have drawn next
    original = np.random.default_rng(0)
    original.bit_generator.state = state["rng_state"]
    assert np.array_equal(checkpoint.generator().random(5), original.random(5))


def test_models_made_from_a_checkpoint_do_not_share_its_arrays(saved):
    checkpoint = load_checkpoint(saved[0])
    first, second = checkpoint.model(), checkpoint.model()
    before = {name: value.copy() for name, value in checkpoint.params.items()}
    for value in first.params.values():
        value += 1.0                               # training first in place
    for name, value in before.items():
        assert np.array_equal(checkpoint.params[name], value) and np.array_equal(second.params[name], value)


def test_a_restored_optimizer_continues_like_the_original(saved):
    """AdamW from the file and the AdamW that wrote it make the same next update, bit for bit."""
    path, state = saved
    checkpoint = load_checkpoint(path)
    restored = AdamW()
    restored.load_state_dict(checkpoint.optimizer_state)
    original = AdamW()
    original.load_state_dict(state["optimizer_state"])
    params_a = {name: value.copy() for name, value in checkpoint.params.items()}
    params_b = {name: value.copy() for name, value in state["params"].items()}
    grads = {name: np.full_like(value, 0.5) for name, value in params_a.items()}
    restored.step(params_a, grads, lr=1e-3)
    original.step(params_b, grads, lr=1e-3)
    assert all(np.array_equal(params_a[name], params_b[name]) for name in params_a)


def test_numpy_scalars_in_optimizer_state_keep_their_type(tmp_path):
    state = make_state()
    state["optimizer_state"]["extra"] = {"beta_power": np.float32(0.81), "count": 3, "note": None}
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", **state))
    extra = checkpoint.optimizer_state["extra"]
    assert type(extra["beta_power"]) is np.float32 and extra["beta_power"] == np.float32(0.81)
    assert extra["count"] == 3 and extra["note"] is None


def test_random_bytes_are_a_clear_error(tmp_path):
    path = tmp_path / "noise.npz"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(ValueError, match="not a readable tinylatent checkpoint .corrupted or truncated"):
        load_checkpoint(path)


@pytest.mark.parametrize("write", [lambda path: np.save(path, np.ones(3)),
                                   lambda path: path.write_bytes(b"\x80\x04K\x01.")],   # a .npy, a pickle
                         ids=["npy", "pickle"])
def test_a_file_that_is_no_zip_archive_is_named_as_such(tmp_path, write):
    path = tmp_path / "not_a_checkpoint"
    write(path)
    path = next(tmp_path.iterdir())                     # np.save may have added ".npy"
    with pytest.raises(ValueError, match=r"a checkpoint is a \.npz \(zip\) archive, and this file is not one") as error:
        load_checkpoint(path)
    assert "allow_pickle" not in str(error.value)


def test_a_truncated_file_is_a_clear_error(saved):
    path, _ = saved
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupted or truncated"):
        load_checkpoint(path)


def test_a_flipped_byte_inside_an_array_is_caught_by_the_crc(saved):
    path, state = saved
    data = bytearray(path.read_bytes())
    # find the bytes of one parameter inside the (uncompressed) archive and damage one
    needle = state["params"]["h.0.mlp.c_fc.weight"].tobytes()[:64]
    offset = bytes(data).find(needle)
    assert offset > 0
    data[offset + 10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupted or truncated.*CRC"):
        load_checkpoint(path)


def test_a_missing_parameter_is_named(saved):
    path, _ = saved
    rewrite(path, lambda arrays, metadata: arrays.pop("params/ln_f.weight"))
    with pytest.raises(ValueError, match="parameter 'ln_f.weight', which the model config needs, is missing"):
        load_checkpoint(path)


def test_a_missing_metadata_key_is_named(saved):
    path, _ = saved
    rewrite(path, lambda arrays, metadata: metadata.pop("rng_state"))
    with pytest.raises(ValueError, match="missing the key.s. rng_state"):
        load_checkpoint(path)


def test_no_metadata_at_all_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(ValueError, match="not a tinylatent checkpoint"):
        load_checkpoint(path)


def test_another_format_version_is_refused(saved):
    path, _ = saved
    rewrite(path, lambda arrays, metadata: metadata.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(ValueError, match=f"format version {FORMAT_VERSION + 1}; .* reads version {FORMAT_VERSION}"):
        load_checkpoint(path)


def test_params_that_do_not_match_the_config_are_refused(saved):
    path, _ = saved

    def wider_model(arrays, metadata):
        metadata["model_config"]["d_model"] = 32

    rewrite(path, wider_model)
    with pytest.raises(ValueError, match=r"parameter 'wte' has shape \(5, 16\) but the model config needs \(5, 32\)"):
        load_checkpoint(path)


def test_extra_params_are_refused(saved):
    path, _ = saved

    def add_an_untied_head(arrays, metadata):
        arrays["params/lm_head.weight"] = np.zeros((5, 16), dtype=np.float32)

    rewrite(path, add_an_untied_head)
    with pytest.raises(ValueError, match=r"\['lm_head.weight'\] are not part of the model config"):
        load_checkpoint(path)


def test_non_finite_params_are_refused(saved):
    path, _ = saved
    rewrite(path, lambda arrays, metadata: arrays["params/wpe"].__setitem__((0, 0), np.nan))
    with pytest.raises(ValueError, match="'wpe' contains NaN or inf"):
        load_checkpoint(path)


def test_a_bad_generator_state_is_refused():
    with pytest.raises(ValueError, match="unknown bit generator"):
        generator_from_state({"bit_generator": "NotAGenerator", "state": {}})
    with pytest.raises(ValueError, match="not a valid PCG64 state"):
        generator_from_state({"bit_generator": "PCG64", "state": {"state": "x"}})


def test_a_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.npz")


def test_a_crash_while_writing_leaves_the_old_checkpoint_whole(saved, monkeypatch):
    path, state = saved
    before = path.read_bytes()

    def crash(handle, **arrays):
        handle.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, **{**state, "step": 3})
    assert path.read_bytes() == before
    assert os.listdir(path.parent) == [path.name]  # the temporary file is gone too
    monkeypatch.undo()
    assert load_checkpoint(path).step == 2


# -- save refuses what load would refuse; load checks every entry ------------------------------

def _with_param(name, change):
    """An edit of make_state()'s keyword arguments that replaces the parameter ``name`` by ``change(it)``."""
    def edit(state):
        state["params"] = {**state["params"], name: change(state["params"][name])}
    return edit


def _other_language(state):
    state["language"] = random_language(n_intentions=2, n_letters=5, letters_per_intention=2, message_length=4, seed=0)


SAVE_REFUSES = [   # (id, edit of the keyword arguments, what the message says)
    ("negative step", lambda s: s.update(step=-1), r"'step' must be a non-negative integer; got -1"),
    ("fractional step", lambda s: s.update(step=1.7), r"'step' must be a non-negative integer; got 1\.7"),
    ("string step", lambda s: s.update(step="3"), r"'step' must be a non-negative integer; got '3'"),
    ("bool step", lambda s: s.update(step=True), r"'step' must be a non-negative integer; got True"),
    ("no step", lambda s: s.update(step=None), r"'step' must be a non-negative integer; got None"),
    ("NaN parameter", _with_param("wpe", lambda p: np.full_like(p, np.nan)), r"'wpe' contains NaN or inf"),
    ("parameter shape", _with_param("wpe", lambda p: p[:4]), r"'wpe' has shape \(4, 16\) but the model config needs \(8, 16\)"),
    ("parameter dtype", _with_param("wpe", lambda p: p.astype(np.float64)), r"'wpe' has dtype float64; the model config says float32"),
    ("rng state", lambda s: s.update(rng_state={"x": 1}), r"generator state must be a dict with a 'bit_generator' entry"),
    ("no rng state", lambda s: s.update(rng_state=None), r"generator state must be a dict with a 'bit_generator' entry"),
    ("no train config", lambda s: s.update(train_config=None), r"'train_config' must be a JSON object"),
    ("bad train config", lambda s: s.update(train_config={"steps": -5}), r"TrainConfig\.steps must be a positive integer; got -5"),
    ("another vocabulary", _other_language, r"the language has 6 tokens but the model config has vocab_size 5"),
    ("no language", lambda s: s.update(language=None), r"language must be a tinylatent Language; got NoneType"),
    ("no optimizer state", lambda s: s.update(optimizer_state=None), r"optimizer state must be a dict with 'step', 'm' and 'v'"),
    ("metrics list", lambda s: s.update(metrics=[("train_loss", 1.0)]), r"'metrics' must be a JSON object"),
    ("integer metric key", lambda s: s.update(metrics={1: 0.5}), r"metrics keys must be strings; got 1"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in SAVE_REFUSES], ids=[case[0] for case in SAVE_REFUSES])
def test_save_refuses_what_load_would_refuse_and_keeps_the_old_file(saved, edit, message):
    """Each of these was written (or crashed with a TypeError) and then refused or changed by load."""
    path, state = saved
    before = path.read_bytes()
    state = dict(state)
    edit(state)
    with pytest.raises(ValueError, match=message) as error:
        save_checkpoint(path, **state)
    assert str(error.value).startswith(f"cannot save a checkpoint to {path}: ")
    assert path.read_bytes() == before and os.listdir(path.parent) == [path.name]


def test_numpy_numbers_in_metrics_and_configs_are_stored_as_python_numbers(tmp_path):
    state = make_state()
    state.update(step=np.int64(2), metrics={"train_loss": np.float32(1.25), "val_loss": np.float64(1.5)},
                 train_config={"steps": np.int64(10), "max_lr": np.float32(1e-3), "betas": (np.float32(0.9), 0.95)})
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", **state))
    assert checkpoint.step == 2 and type(checkpoint.step) is int
    assert checkpoint.metrics == {"train_loss": 1.25, "val_loss": 1.5}
    assert all(type(value) is float for value in checkpoint.metrics.values())
    assert checkpoint.train_config == {"steps": 10, "max_lr": float(np.float32(1e-3)), "betas": [float(np.float32(0.9)), 0.95]}


def test_a_generator_state_that_holds_arrays_round_trips(tmp_path):
    """MT19937's state holds a NumPy array (its key): stored as a list, it restores the same stream."""
    state = make_state()
    original = np.random.Generator(np.random.MT19937(5))
    state["rng_state"] = original.bit_generator.state
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", **state))
    assert np.array_equal(checkpoint.generator().random(5), original.random(5))


def _moment_of_another_shape(arrays, metadata):
    arrays["optimizer/m/wpe"] = arrays["optimizer/m/wpe"][:4]
    arrays["optimizer/v/wpe"] = arrays["optimizer/v/wpe"][:4]


LOAD_REFUSES = [   # (id, edit of the raw archive, what the message says)
    ("bad train config", lambda arrays, metadata: metadata.update(train_config={"steps": -5}),
     r"bad train config: TrainConfig\.steps must be a positive integer; got -5"),
    ("train context too long", lambda arrays, metadata: metadata["train_config"].update(context_length=9),
     r"bad train config: TrainConfig\.context_length \(9\) exceeds the model's context_length \(8\)"),
    ("no optimizer state", lambda arrays, metadata: metadata.update(optimizer_state=None),
     r"optimizer state must be a dict with 'step', 'm' and 'v'; got NoneType"),
    ("moment shape", _moment_of_another_shape, r"optimizer state: m\['wpe'\] has shape \(4, 16\); its parameter has \(8, 16\)"),
    ("metrics list", lambda arrays, metadata: metadata.update(metrics=[1.0]),
     r"'metrics' must be a JSON object of name -> number; got list"),
    ("metric text", lambda arrays, metadata: metadata["metrics"].update(val_loss="low"),
     r"metric 'val_loss' must be a number or None; got 'low'"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in LOAD_REFUSES], ids=[case[0] for case in LOAD_REFUSES])
def test_load_refuses_contents_it_used_to_take_blindly(saved, edit, message):
    path, _ = saved
    rewrite(path, edit)
    assert_load_refuses(path, message)


def assert_load_refuses(path, message: str) -> None:
    """``load_checkpoint(path)`` raises a ValueError matching ``message`` that starts with the path."""
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ")


def test_a_folder_is_named_as_a_folder(tmp_path):
    with pytest.raises(ValueError, match=r"is a folder, not a checkpoint file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("path", [None, "", 3], ids=["None", "empty", "number"])
def test_a_path_that_names_no_file_is_a_value_error(saved, path):
    _, state = saved
    with pytest.raises(ValueError, match=r"checkpoint path (must be a str or os\.PathLike|is empty)"):
        load_checkpoint(path)
    with pytest.raises(ValueError, match=r"checkpoint path (must be a str or os\.PathLike|is empty)"):
        save_checkpoint(path, **state)


# -- what a fuzzing pass found (each of these failed on the old code) ------------------------------

def rewrite_text(path, edit_text) -> None:
    """Like :func:`rewrite`, with ``edit_text(text)`` changing the metadata's JSON text itself."""
    with np.load(path) as archive:
        arrays = {key: archive[key] for key in archive.files}
    arrays[METADATA_KEY] = np.array(edit_text(str(arrays[METADATA_KEY][()])))
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _replace_json(key, old, new):
    """An edit of the metadata text: the value ``old`` after ``"key": `` becomes the raw text ``new``."""
    def edit(text):
        assert f'"{key}": {old}' in text
        return text.replace(f'"{key}": {old}', f'"{key}": {new}', 1)
    return edit


METADATA_TEXT_REFUSED = [   # (id, edit of the metadata text, what the message says); were OverflowError / RecursionError
    ("huge integer in the language", _replace_json("initial", "[", "[" + "1" + "0" * 400 + ", "),
     r"the metadata holds an integer of 401 digits; a number must fit a float64"),
    ("huge init_std", _replace_json("init_std", "0.02", "1" + "0" * 400), r"the metadata holds an integer of 401 digits"),
    ("5001 digits", _replace_json("init_std", "0.02", "1" + "0" * 5000), r"the metadata holds an integer of 5,001 digits"),
    ("deep nesting", _replace_json("val_loss", "1.5", "[" * 1000 + "]" * 1000), r"the metadata nests lists or objects too deeply"),
    ("huge has_uint32", _replace_json("has_uint32", "0", "1" + "0" * 30), r"not a valid PCG64 state \(OverflowError"),
    ("n_layer beyond the arrays", _replace_json("n_layer", "1", "1000"),   # 10**30 filled the memory listing its parameters
     r"n_layer 1000 but the file holds only \d+ parameter arrays"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in METADATA_TEXT_REFUSED],
                         ids=[case[0] for case in METADATA_TEXT_REFUSED])
def test_bad_numbers_and_nesting_in_the_metadata_are_value_errors_naming_the_file(saved, edit, message):
    path, _ = saved
    rewrite_text(path, edit)
    assert_load_refuses(path, message)


def _state_of(name, seed=1):
    state = getattr(np.random, name)(seed).state
    return json.loads(json.dumps(state, default=lambda array: array.tolist()))   # as the metadata holds it


def _edited(state, edit):
    edit(state)
    return state


BAD_GENERATOR_STATES = [   # (id, state, what the message says)
    ("abstract base class", {"bit_generator": "BitGenerator", "state": {}},            # was NotImplementedError
     r"unknown bit generator 'BitGenerator' .*; allowed: PCG64, PCG64DXSM, MT19937, Philox, SFC64"),
    ("huge has_uint32", _edited(_state_of("PCG64"), lambda s: s.update(has_uint32=10**400)),   # was OverflowError
     r"not a valid PCG64 state \(OverflowError"),
    ("short MT19937 key", _edited(_state_of("MT19937"), lambda s: s["state"].update(key=[1, 2, 3])),   # was IndexError
     r"not a valid MT19937 state \(IndexError"),
    ("MT19937 pos -1", _edited(_state_of("MT19937"), lambda s: s["state"].update(pos=-1)),   # was taken, then read memory outside the key
     r"not a valid MT19937 state: its 'pos' must be an integer in 0\.\.624; got -1"),
    ("Philox buffer_pos 5", _edited(_state_of("Philox"), lambda s: s.update(buffer_pos=5)),   # -10**7 crashed the draw
     r"not a valid Philox state: its 'buffer_pos' must be an integer in 0\.\.4; got 5"),
]


@pytest.mark.parametrize("state, message", [case[1:] for case in BAD_GENERATOR_STATES],
                         ids=[case[0] for case in BAD_GENERATOR_STATES])
def test_every_bad_generator_state_is_a_value_error(state, message):
    with pytest.raises(ValueError, match=message):
        generator_from_state(state)


def test_every_numpy_bit_generator_state_round_trips_through_json():
    for name in ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64"):
        original = np.random.Generator(getattr(np.random, name)(3))
        original.random(7)                                  # a state in the middle of a buffer
        restored = generator_from_state(json.loads(json.dumps(original.bit_generator.state, default=lambda a: a.tolist())))
        assert np.array_equal(restored.random(5), original.random(5)), name


def _optimizer_state_edit(edit):
    """An edit of make_state()'s keyword arguments that changes a copy of its optimiser state."""
    def change(state):
        optimizer_state = {**state["optimizer_state"], "m": dict(state["optimizer_state"]["m"]),
                           "v": dict(state["optimizer_state"]["v"])}
        edit(optimizer_state)
        state["optimizer_state"] = optimizer_state
    return change


def _without_moments_of(name):
    def edit(optimizer_state):
        del optimizer_state["m"][name], optimizer_state["v"][name]
    return edit


MOMENTS_REFUSED = [   # (id, edit of the optimiser state, what the message says); all were written and read
    ("NaN first moment", lambda o: o["m"].update(wpe=np.full_like(o["m"]["wpe"], np.nan)),
     r"optimizer state: m\['wpe'\] contains NaN or inf; moments must be finite"),
    ("inf second moment", lambda o: o["v"].update(wte=np.full_like(o["v"]["wte"], np.inf)),
     r"optimizer state: v\['wte'\] contains NaN or inf"),
    ("negative second moment", lambda o: o["v"].update(wpe=-np.ones_like(o["v"]["wpe"])),
     r"optimizer state: v\['wpe'\] has a negative entry; a second moment .* is ≥ 0"),
    ("missing moments after a step", _without_moments_of("wpe"),
     r"optimizer state: it is at step 2 but has no moments for \['wpe'\]; after a step every parameter has them"),
]


@pytest.mark.parametrize("edit, message", [case[1:] for case in MOMENTS_REFUSED], ids=[case[0] for case in MOMENTS_REFUSED])
def test_bad_moments_are_refused_on_save_and_on_load(saved, edit, message):
    path, state = saved
    bad_state = dict(state)
    _optimizer_state_edit(edit)(bad_state)
    with pytest.raises(ValueError, match=message):
        save_checkpoint(path, **bad_state)
    assert load_checkpoint(path).step == 2                           # the old file is kept

    def edit_archive(arrays, metadata):
        moments = {"m": {}, "v": {}}
        for moment in moments:
            for name in metadata["optimizer_state"][moment]:
                moments[moment][name] = arrays.pop(f"optimizer/{moment}/{name}")
        optimizer_state = {**metadata["optimizer_state"], **moments}
        edit(optimizer_state)
        for moment in moments:
            metadata["optimizer_state"][moment] = {}
            for name, value in optimizer_state[moment].items():
                arrays[f"optimizer/{moment}/{name}"] = value
                metadata["optimizer_state"][moment][name] = {"__array__": f"optimizer/{moment}/{name}"}

    rewrite(path, edit_archive)
    with pytest.raises(ValueError, match=message) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ")


def test_no_moments_before_the_first_step_are_fine(tmp_path):
    state = {**make_state(), "optimizer_state": AdamW().state_dict(), "step": 0}
    assert load_checkpoint(save_checkpoint(tmp_path / "c.npz", **state)).optimizer_state["m"] == {}


def test_fortran_ordered_arrays_come_back_in_c_order_and_resume_alike(saved, tmp_path):
    """np.savez of np.asfortranarray: eval took it, a resume refused it (AdamW updates through flat views)."""
    path, _ = saved
    fortran = tmp_path / "fortran.npz"
    fortran.write_bytes(path.read_bytes())
    rewrite(fortran, lambda arrays, metadata: arrays.update(
        {key: np.asfortranarray(value) for key, value in arrays.items() if value.ndim == 2}))
    with np.load(fortran) as archive:
        assert not archive["params/wte"].flags.c_contiguous and not archive["optimizer/m/wte"].flags.c_contiguous
    updated = []
    for checkpoint in (load_checkpoint(path), load_checkpoint(fortran)):
        assert all(value.flags.c_contiguous for value in checkpoint.params.values())
        assert all(value.flags.c_contiguous for moment in ("m", "v") for value in checkpoint.optimizer_state[moment].values())
        optimizer = AdamW()
        optimizer.load_state_dict(checkpoint.optimizer_state)
        params = checkpoint.model().params
        optimizer.step(params, {name: np.full_like(value, 0.5) for name, value in params.items()}, lr=1e-3)
        updated.append((params, optimizer.state_dict()))
    (params_c, optimizer_c), (params_f, optimizer_f) = updated
    assert all(np.array_equal(params_c[name], params_f[name]) for name in params_c)
    assert all(np.array_equal(optimizer_c[moment][name], optimizer_f[moment][name])
               for moment in ("m", "v") for name in optimizer_c[moment])
