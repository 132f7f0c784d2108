"""Checkpoints load with torch.load(weights_only=True): RNG states as plain types, planted and
old (pickle-only) checkpoints refused with one line, old ones resumed exactly when trusted."""

import io
import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_data import Payload
from test_train import metrics, small

import dfatools
from mltools.runs import checkpoint, runlog
from mltools.runs.checkpoint import UnsafeCheckpoint
from mltools.sweeps.sweep import RunSpec, run_sweep
from mltools.training.train import train_run

CPU = torch.device("cpu")


def through_safe_load(obj):
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), draws=st.integers(0, 700), gauss=st.booleans())
def test_rng_states_survive_the_safe_format_exactly(seed, draws, gauss):
    """The plain forms go through torch.save/torch.load(weights_only=True) and back to states
    that continue with the same numbers (624 draws wrap the Mersenne Twister's position)."""
    np_rng, py_rng = np.random.RandomState(seed), random.Random(seed)
    np_rng.random_sample(draws)
    [py_rng.random() for _ in range(draws)]
    if gauss:  # a cached second Gaussian is part of both states
        np_rng.standard_normal()
        py_rng.gauss(0, 1)
    np_state, py_state = np_rng.get_state(), py_rng.getstate()
    saved = through_safe_load(
        {
            "numpy": checkpoint.numpy_rng_to_plain(np_state),
            "random": checkpoint.python_rng_to_plain(py_state),
        }
    )
    np_back = checkpoint.numpy_rng_from_plain(saved["numpy"])
    assert np_back[0] == np_state[0] and np_back[1].dtype == np.uint32
    assert np.array_equal(np_back[1], np_state[1]) and np_back[2:] == np_state[2:]
    assert checkpoint.python_rng_from_plain(saved["random"]) == py_state
    again_np, again_py = np.random.RandomState(), random.Random()
    again_np.set_state(np_back)
    again_py.setstate(checkpoint.python_rng_from_plain(saved["random"]))
    assert np.array_equal(again_np.standard_normal(5), np_rng.standard_normal(5))
    assert [again_py.gauss(0, 1) for _ in range(3)] == [py_rng.gauss(0, 1) for _ in range(3)]


def test_checkpoint_and_model_load_safely(tmp_path):
    train_run(small(epochs=1), tmp_path, CPU, quiet=True)
    for name in (runlog.CHECKPOINT, runlog.PREVIOUS_CHECKPOINT, runlog.MODEL):
        torch.load(tmp_path / name, weights_only=True)  # raises if anything needs pickle
        assert checkpoint.unsafe_globals(tmp_path / name) == []
    assert not list(tmp_path.glob(".*.tmp"))


def test_planted_checkpoint_is_refused_and_runs_nothing(tmp_path, capsys):
    run_dir, marker = tmp_path / "run", tmp_path / "pwned"
    run_sweep([RunSpec(small(epochs=1), run_dir)], device="cpu", quiet=True)
    torch.save({"epoch": 1, "model": Payload(open, str(marker), "w")}, run_dir / runlog.CHECKPOINT)
    capsys.readouterr()
    outcomes = run_sweep([RunSpec(small(epochs=2), run_dir)], device="cpu", quiet=True)
    assert outcomes["failed"] == 1 and not marker.exists()
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "UnsafeCheckpoint" in printed[0] and "io.open" in printed[0]
    assert "--trust-checkpoints" in printed[0] and "Delete it" in printed[0]
    log = (run_dir / runlog.LOG).read_text()
    assert "refused:" in log and "is damaged" not in log  # unsafe is not damaged: no fallback
    assert "resumed" not in log and "restarting from scratch" not in log
    assert json.loads((run_dir / runlog.CONFIG).read_text())["status"] == "failed"


def make_old_format(path) -> None:
    """Rewrite a checkpoint as the code before the safe format wrote it: RNG states as tuples."""
    state = torch.load(path, weights_only=True)
    state["numpy"] = checkpoint.numpy_rng_from_plain(state["numpy"])
    state["random"] = checkpoint.python_rng_from_plain(state["random"])
    torch.save(state, path)


def test_old_checkpoint_is_refused_then_resumes_exactly_when_trusted(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(small(epochs=3, model={"dropout": 0.3}), a, CPU, quiet=True)
    train_run(small(epochs=1, model={"dropout": 0.3}), b, CPU, quiet=True)
    for name in (runlog.CHECKPOINT, runlog.PREVIOUS_CHECKPOINT):
        make_old_format(b / name)
    with pytest.raises(UnsafeCheckpoint, match="--trust-checkpoints") as err:
        train_run(small(epochs=3, model={"dropout": 0.3}), b, CPU, quiet=True)
    assert "\n" not in str(err.value) and "numpy" in str(err.value)
    train_run(small(epochs=3, model={"dropout": 0.3}, trust_checkpoints=True), b, CPU, quiet=True)
    assert metrics(a) == metrics(b)
    log = (b / runlog.LOG).read_text()
    assert "loaded with pickle" in log and "resumed from the checkpoint of epoch 1" in log
    assert checkpoint.unsafe_globals(b / runlog.CHECKPOINT) == []  # rewritten safely


def test_a_checkpoint_of_another_model_version_is_refused_in_one_line():
    """An older brsf checkpoint (no drawn magnitudes), one with a key the model lacks, or one
    with a tensor of another shape cannot resume: one line names the key."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model = dfatools.to_rsf(net, "brsf")
    state = model.state_dict()
    old = {k: v for k, v in state.items() if not k.endswith("feedback_magnitude")}
    extra = {**state, "2.feedback_weight": torch.zeros(3, 8)}
    shape = {**state, "2.weight": torch.zeros(3, 9)}
    for saved, refused in [
        (old, r"lacks 0.feedback_magnitude \(and 1 more\)"),
        (extra, "holds 2.feedback_weight, which the model has not"),
        (shape, "size mismatch for 2.weight"),
    ]:
        with pytest.raises(checkpoint.IncompatibleCheckpoint, match=refused) as err:
            checkpoint.restore({"model": saved}, dfatools.to_rsf(net, "brsf"), *[None] * 3, CPU)
        assert "\n" not in str(err.value) and "another --out folder" in str(err.value)
