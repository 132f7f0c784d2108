"""The 2019 code's bottleneck network (issue 20): its input-gradient mask, its feedback points
(none before the bottleneck layer), against hand computations in float64 numpy."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mltools.models import networks
from mltools.runs import runlog
from mltools.training.train import RunConfig, build_model, train_run

CPU = torch.device("cpu")
K = 4


# -- the mask -------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 28, 400])
def test_mask_keeps_about_size_over_width(size):
    """Each entry is kept with probability size / 800: the kept fraction of a (128, 800) mask is
    within 5 binomial standard deviations of it."""
    net = networks.bottleneck_net((1, 4, 4), 10, size, seed=2, input_mask_batch=128)
    (mask,) = [m.mask for m in net.modules() if isinstance(m, networks.InputGradMask)]
    assert mask.shape == (128, 800) and mask.dtype == torch.bool
    p, n = size / 800, mask.numel()
    assert abs(mask.float().mean().item() - p) < 5 * math.sqrt(p * (1 - p) / n)


def test_mask_is_seeded_and_its_own_stream():
    """Same seed, same mask; another seed, another; never the Bottleneck's weight-mask bits; a
    buffer in the state_dict; and drawing it leaves the global RNG alone (so all and 2019 runs
    of one seed start from the same weights)."""
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    networks.InputGradMask(64, 800, 0.25, seed=5)
    assert torch.equal(torch.rand(1), before)

    def net(seed):
        return networks.bottleneck_net((1, 2, 2), 3, 200, seed=seed, input_mask_batch=64)

    a, b, c = net(0), net(0), net(1)
    ma, mb, mc = (n[3].mask for n in (a, b, c))
    assert torch.equal(ma, mb) and not torch.equal(ma, mc)
    assert not torch.equal(ma, a[4].weight_mask[:64])
    assert torch.equal(a.state_dict()["3.mask"], ma)


def test_mask_gradient_rows_by_batch_position():
    """Values pass unchanged; the gradient is multiplied by the mask row of each batch position:
    the first n rows for a batch of n <= 6, rows i mod 6 for a larger one."""
    layer = networks.InputGradMask(6, 5, 0.5, seed=1)
    mask = layer.mask.double().numpy()
    gen = torch.Generator().manual_seed(0)
    for n in (6, 4, 15):
        x = torch.randn(n, 5, generator=gen, dtype=torch.float64, requires_grad=True)
        g = torch.randn(n, 5, generator=gen, dtype=torch.float64)
        out = layer(x)
        assert torch.equal(out, x)
        out.backward(g)
        rows = mask[np.arange(n) % 6]
        np.testing.assert_array_equal(x.grad.numpy(), g.numpy() * rows)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        layer(torch.zeros(2, 4))


# -- the 2019 network -----------------------------------------------------------------------------
def small(points, **changes) -> RunConfig:
    """A bottleneck run of ``points`` on digits, small enough for a test."""
    base = dict(
        experiment=f"mask-std-b5-points{points}",
        arch="bottleneck",
        model={"points": points, "size": 5, "width": 32},
        epochs=2,
        batch_size=64,
        lr=0.05,
        train_samples=256,
    )
    return RunConfig(**{**base, **changes})


def numpy_2019_grads(model, x, y, mask, seed):
    """Hand-written gradients of the 2019 bottleneck net in float64, feedback seed ``seed``:
    points at h2 (after the bottleneck's tanh) and h3; the first layer learns from h2's DFA
    signal back-propagated through the bottleneck layer, times ``mask`` ``(N, W)`` (ones: no
    input mask)."""
    lin = [m for m in model.modules() if isinstance(m, nn.Linear)]
    W = [m.weight.detach().double().numpy() for m in lin]
    b = [m.bias.detach().double().numpy() for m in lin]
    wmask = lin[1].weight_mask.double().numpy()
    bmask = lin[1].bias_mask.double().numpy()
    x = x.flatten(1).double().numpy()
    a1 = np.tanh(x @ W[0].T + b[0])
    a2 = np.tanh(a1 @ W[1].T + b[1])
    a3 = np.tanh(a2 @ W[2].T + b[2])
    out = a3 @ W[3].T + b[3]
    p = np.exp(out - out.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    n, width = len(x), W[1].shape[0]
    dldy = (p - np.eye(K)[y.numpy()]) / n
    e = dldy * n
    # DESIGN.md 2: one (K, D) matrix, D = width (both points are width wide), normalized.
    gen = torch.Generator().manual_seed(seed)  # the DFA seed is the run seed
    M = torch.randn(K, width, generator=gen).double().numpy() / math.sqrt(width * K)
    d2 = (e @ M) * (1 - a2**2)
    d3 = (e @ M) * (1 - a3**2)
    d1 = ((d2 @ W[1]) * mask) * (1 - a1**2)
    return [
        d1.T @ x,
        d1.sum(0),
        (d2.T @ a1) * wmask,
        d2.sum(0) * bmask,
        d3.T @ a2,
        d3.sum(0),
        dldy.T @ a3,
        dldy.sum(0),
    ]


@pytest.mark.parametrize("points", ["2019", "2019-nomask"])
def test_2019_gradients_match_hand_computation(points):
    torch.manual_seed(0)
    model = build_model(
        small(points, model={"points": points, "size": 5, "width": 16}, batch_size=8, seed=3),
        (1, 2, 3),
        K,
    )
    masks = [m for m in model.modules() if isinstance(m, networks.InputGradMask)]
    assert len(masks) == (1 if points == "2019" else 0)
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 1, 2, 3, generator=gen), torch.randint(0, K, (6,), generator=gen)
    F.cross_entropy(model(x), y).backward()
    if masks:
        assert masks[0].mask.shape == (8, 16)  # the first full batch's input gradient
        mask = masks[0].mask[:6].double().numpy()  # a batch of 6 < 8: the first rows
        assert 0 < mask.mean() < 1
    else:
        mask = np.ones((6, 16))
    expected = numpy_2019_grads(model, x, y, mask, seed=3)
    got = [p.grad.double().numpy() for p in model.parameters()]
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-7)


def records(run_dir):
    lines = (run_dir / runlog.METRICS).read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time_s"} for line in lines]


@pytest.mark.parametrize("points", ["2019", "2019-nomask"])
def test_resume_is_exact_and_layout_recorded(tmp_path, points):
    a, b = tmp_path / "a", tmp_path / "b"
    train_run(small(points, epochs=3), a, CPU, quiet=True)
    train_run(small(points, epochs=1), b, CPU, quiet=True)
    train_run(small(points, epochs=3), b, CPU, quiet=True)
    assert "resumed from the checkpoint of epoch 1" in (b / "log.txt").read_text()
    assert records(a) == records(b)
    assert all(len(r["alignment"]) == 2 for r in records(a))  # h2 and h3 only
    cfg = json.loads((a / runlog.CONFIG).read_text())
    assert cfg["model"]["points"] == points
    assert (cfg["point_blocks"], cfg["bottleneck_point"]) == ([1, 2], 0)
    state = torch.load(a / runlog.MODEL, weights_only=True)
    assert ("3.mask" in state) == (points == "2019")


def test_tensorboard_names_the_2019_points_by_their_layers(tmp_path):
    """The 2019 network's two points read h2 and h3: TensorBoard's tags say so, as the reports."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train_run(small("2019", epochs=1, tensorboard=True), tmp_path, CPU, quiet=True)
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    tags = {t for t in acc.Tags()["scalars"] if t.startswith("alignment/cos_mean/h")}
    assert tags == {"alignment/cos_mean/h2", "alignment/cos_mean/h3"}
    last = records(tmp_path)[-1]["alignment"]
    assert acc.Scalars("alignment/cos_mean/h3")[-1].value == pytest.approx(last[1]["cos_mean"])


def test_today_layout_recorded(tmp_path):
    train_run(small("all", epochs=1, experiment="mask-std-b5"), tmp_path, CPU, quiet=True)
    cfg = json.loads((tmp_path / runlog.CONFIG).read_text())
    assert (cfg["point_blocks"], cfg["bottleneck_point"]) == ([0, 1, 2], 1)


def test_pai_prealigns_both_2019_points(tmp_path):
    train_run(small("2019", epochs=1, init="pai"), tmp_path, CPU, quiet=True)
    first = records(tmp_path)[0]["alignment"]
    assert len(first) == 2 and all(a["cos_mean"] > 0.99 for a in first)


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"model": {"points": "nope", "size": 5}}, "unknown bottleneck points"),
        ({"model": {"points": "2019", "mode": "width", "size": 5}}, "mask-mode"),
        ({"model": {"size": None}}, "needs a size"),
    ],
)
def test_bad_points_setting_is_a_clear_error(changes, match):
    with pytest.raises(ValueError, match=match):
        build_model(small("all", **changes), (1, 2, 3), K)
