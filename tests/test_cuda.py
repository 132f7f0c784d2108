"""The CUDA path against the CPU one: gradients, feedback matrices, checkpoints, --jobs, alignment
and PAI. Every test needs a GPU (marker ``cuda``; tests/conftest.py skips them, with the reason,
where none is present). Small models on ``digits``: the file runs in well under a minute.

    python -m pytest -m cuda -rs
"""

import copy
import json
import os

import pytest
import torch
import torch.nn.functional as F
from test_train import metrics, small

import dfatools
from mltools.models import networks
from mltools.runs import runlog
from mltools.sweeps.sweep import RunSpec, run_sweep
from mltools.training.train import RunConfig, build_model, evaluate, get_data, train_run

pytestmark = pytest.mark.cuda

CPU, CUDA = torch.device("cpu"), torch.device("cuda")

# Gradients and PAI weights are compared by their relative error in Frobenius norm. float32 sums
# taken in another order (and cuDNN's choice of conv algorithm) differ by about 1e-6..1e-5; a DFA
# mistake (another B, a missing sqrt(D/d_l) factor, BP leaking through a point) is of order 1.
GRAD_RTOL = 1e-4
# PAI solves least-squares problems whose condition number (~100 on this batch) amplifies that
# rounding: float32 and float64 PAI weights differ by 2e-5 on the CPU.
PAI_RTOL = 1e-3
# Alignment: cosines are means over 128 samples of float32 dot products (atol 1e-4). An angle
# near 0 is arccos of a cosine near 1, whose slope is unbounded: after PAI the float32 and
# float64 angles differ by up to 0.01 degree on the CPU.
COS_ATOL, ANGLE_ATOL_DEG = 1e-4, 0.05


@pytest.fixture
def exact_float32():
    """TF32 off for the test: cuDNN convolutions use it by default (a 10-bit mantissa, errors
    ~1e-3), which would hide the comparison of the DFA path behind the format's rounding."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``|value - reference| / |reference|`` in Frobenius norm, both moved to the CPU."""
    value, reference = value.detach().cpu().double(), reference.detach().cpu().double()
    return float((value - reference).norm() / reference.norm())


def dfa_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Every parameter's DFA gradient for the batch ``(x, y)``."""
    model.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    return {name: p.grad for name, p in model.named_parameters()}


def linear_weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]


def assert_alignment_close(on_cuda: list, on_cpu: list) -> None:
    assert len(on_cuda) == len(on_cpu)
    for a, b in zip(on_cuda, on_cpu):
        for field in ("cos_mean", "cos_std", "weight_cos", "undefined_frac"):
            assert getattr(a, field) == pytest.approx(getattr(b, field), abs=COS_ATOL), (
                a.name,
                field,
            )
        assert a.angle_deg == pytest.approx(b.angle_deg, abs=ANGLE_ATOL_DEG), a.name


@pytest.mark.parametrize(
    "changes",
    [
        {"arch": "fc", "model": {"batch_norm": True}},
        {
            "arch": "cnn",
            "model": {"min_side": 16},
        },  # 8x8 digits upsampled to 16x16: 4 feedback points
    ],
)
def test_dfa_gradients_on_cuda_equal_the_cpu_ones(exact_float32, changes):
    data = get_data(RunConfig(), CPU)
    x, y = data.x_train[:64], data.y_train[:64]
    on_cpu = build_model(RunConfig(**changes), data.input_shape, data.num_classes)
    on_cuda = copy.deepcopy(on_cpu).to(CUDA)  # same weights; each draws B at its first pass
    expected = dfa_gradients(on_cpu, x, y)
    got = dfa_gradients(on_cuda, x.to(CUDA), y.to(CUDA))
    assert got.keys() == expected.keys()
    for name, grad in got.items():
        assert grad.device.type == "cuda"
        assert relative_error(grad, expected[name]) < GRAD_RTOL, name


@pytest.mark.parametrize("feedback", ["shared", "independent"])
def test_feedback_matrices_are_the_same_on_cpu_and_cuda(feedback):
    """B is drawn on the CPU from the seeded generator, then moved: the very same numbers."""
    x = torch.randn(4, 1, 8, 8)
    on_cpu, on_cuda = (
        dfatools.to_dfa(networks.fc((1, 8, 8), 10, width=32), 10, feedback=feedback, seed=3)
        for _ in range(2)
    )
    on_cuda.to(CUDA)
    on_cpu(x)  # matrices are created at the first forward pass
    on_cuda(x.to(CUDA))
    pairs = list(zip(on_cpu.feedback.matrices, on_cuda.feedback.matrices))
    assert len(pairs) == (1 if feedback == "shared" else 3)
    for m_cpu, m_cuda in pairs:
        assert m_cuda.device.type == "cuda" and torch.equal(m_cuda.cpu(), m_cpu)


def test_bottleneck_masks_are_the_same_on_cpu_and_cuda():
    on_cpu = dfatools.Bottleneck(64, 32, 5, seed=3)
    on_cuda = dfatools.Bottleneck(64, 32, 5, seed=3, device=CUDA)
    assert on_cuda.weight_mask.device.type == "cuda"
    assert torch.equal(on_cuda.weight_mask.cpu(), on_cpu.weight_mask)
    assert torch.equal(on_cuda.bias_mask.cpu(), on_cpu.bias_mask)


def test_checkpoint_written_on_cuda_resumes_there_and_loads_on_the_cpu(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"

    def run(epochs: int):
        return small(epochs=epochs, model={"dropout": 0.3})  # dropout draws from the CUDA RNG

    train_run(run(3), a, CUDA, quiet=True)
    train_run(run(1), b, CUDA, quiet=True)
    train_run(run(3), b, CUDA, quiet=True)  # resumes at epoch 2, CUDA RNG state restored
    assert metrics(a) == metrics(b)
    assert "resumed from the checkpoint of epoch 1" in (b / runlog.LOG).read_text()
    assert json.loads((a / runlog.CONFIG).read_text())["device"] == "cuda"

    # model.pt on the CPU gives the evaluation recorded on CUDA after the last epoch.
    data = get_data(run(3), CPU)
    model = build_model(run(3), data.input_shape, data.num_classes)
    model.load_state_dict(torch.load(a / runlog.MODEL, map_location="cpu"))
    loss, top1 = evaluate(model, data.x_eval, data.y_eval)
    last = metrics(a)[-1]
    assert loss == pytest.approx(last["eval_loss"], rel=1e-4)
    assert abs(top1 - last["eval_top1"]) <= 100 / len(data.y_eval)  # at most one sample flips

    # The CUDA checkpoint also resumes on the CPU (its CUDA RNG state is then not used).
    train_run(run(4), b, CPU, quiet=True)
    assert [r["epoch"] for r in metrics(b)] == [0, 1, 2, 3, 4]
    assert metrics(b)[:4] == metrics(a)


def test_jobs_2_on_one_gpu_trains_two_runs_in_two_processes(tmp_path):
    specs = [RunSpec(small(epochs=1, seed=s), tmp_path / f"seed{s}") for s in range(2)]
    outcomes = run_sweep(specs, device="cuda", jobs=2, quiet=True)
    assert outcomes["done"] == 2, outcomes
    configs = [json.loads((s.run_dir / runlog.CONFIG).read_text()) for s in specs]
    assert all(c["status"] == "done" and c["device"] == "cuda" for c in configs)
    pids = {c["pid"] for c in configs}
    assert len(pids) == 2 and os.getpid() not in pids  # spawned workers, one run each


def test_alignment_and_pai_on_cuda_agree_with_the_cpu(exact_float32):
    data = get_data(RunConfig(), CPU)
    on_cpu = build_model(RunConfig(arch="fc"), data.input_shape, data.num_classes)
    on_cuda = copy.deepcopy(on_cpu).to(CUDA)
    xa, ya = data.x_eval[:128], data.y_eval[:128]  # the alignment batch (DESIGN.md 3)
    xp, yp = data.x_train[:128], data.y_train[:128]  # PAI's batch, as in training

    def measure(model, device):
        return dfatools.measure_alignment(model, xa.to(device), ya.to(device))

    assert_alignment_close(measure(on_cuda, CUDA), measure(on_cpu, CPU))

    dfatools.prealign(on_cpu, xp, yp)
    dfatools.prealign(on_cuda, xp.to(CUDA), yp.to(CUDA))
    for w_cuda, w_cpu in zip(linear_weights(on_cuda), linear_weights(on_cpu)):
        assert relative_error(w_cuda, w_cpu) < PAI_RTOL
    after = measure(on_cuda, CUDA)
    assert_alignment_close(after, measure(on_cpu, CPU))
    assert all(a.cos_mean > 0.99 for a in after)  # PAI did align every point
