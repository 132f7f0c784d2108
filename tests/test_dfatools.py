"""dfatools against independent computations (numpy formulas, plain autograd on nn.Sequential)."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dfatools

K = 4


def fc_net(seed=0):
    torch.manual_seed(seed)
    # Hidden widths differ (7, 5) so slicing and the sqrt(D/d_l) factor are exercised.
    return nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 5), nn.Tanh(), nn.Linear(5, K))


def batch(n=9, d=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, K, (n,), generator=g)


def feedback_matrices(feedback, normalize, sizes, seed):
    """The matrices of DESIGN.md 2, drawn from a seeded generator, in numpy."""
    gen = torch.Generator().manual_seed(seed)
    if feedback == "shared":
        D = max(sizes)
        B = torch.randn(K, D, generator=gen).double().numpy()
        M = B / math.sqrt(D * K) if normalize else B
        scale = [math.sqrt(D / d) if normalize else 1.0 for d in sizes]
        return [M[:, :d] * c for d, c in zip(sizes, scale)], [M]
    mats = []
    for d in sizes:
        B = torch.randn(K, d, generator=gen).double().numpy()
        mats.append(B / math.sqrt(d * K) if normalize else B)
    return mats, mats


def numpy_fc_forward(net, x):
    """The tanh FC net's forward pass in float64 numpy: weights ``W``, input ``x`` ``(N, 6)``,
    hidden outputs ``h1`` ``(N, 7)``, ``h2`` ``(N, 5)`` and softmax ``p`` ``(N, K)``."""
    W = [net[i].weight.detach().double().numpy() for i in (0, 2, 4)]
    b = [net[i].bias.detach().double().numpy() for i in (0, 2, 4)]
    x = x.double().numpy()
    h1 = np.tanh(x @ W[0].T + b[0])
    h2 = np.tanh(h1 @ W[1].T + b[1])
    out = h2 @ W[2].T + b[2]
    p = np.exp(out - out.max(1, keepdims=True))
    return W, x, h1, h2, p / p.sum(1, keepdims=True)


def numpy_fc_grads(net, x, y, feedback, normalize, error, seed, hidden_error=None):
    """Hand-written DFA gradients of the tanh FC net, all in float64 numpy; ``hidden_error``
    ``(N, K)``, when given, is projected in place of the error (DRTP)."""
    W, x, h1, h2, p = numpy_fc_forward(net, x)
    onehot = np.eye(K)[y.numpy()]
    n = len(x)
    dldy = (p - onehot) / n
    e = dldy * n if error == "sum" else dldy
    if hidden_error is not None:
        e = hidden_error
    slices, stored = feedback_matrices(feedback, normalize, [7, 5], seed)
    s1, s2 = e @ slices[0], e @ slices[1]
    d1, d2 = s1 * (1 - h1**2), s2 * (1 - h2**2)
    grads = [d1.T @ x, d1.sum(0), d2.T @ h1, d2.sum(0), dldy.T @ h2, dldy.sum(0)]
    return grads, stored


@pytest.mark.parametrize("feedback", ["shared", "independent"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("error", ["sum", "mean"])
def test_fc_gradients_match_dfa_formula(feedback, normalize, error):
    net = fc_net()
    model = dfatools.to_dfa(net, K, normalize=normalize, feedback=feedback, error=error, seed=3)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    expected, stored = numpy_fc_grads(net, x, y, feedback, normalize, error, seed=3)
    got = [p.grad.double().numpy() for p in model.parameters()]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    for m, ref in zip(model.feedback.matrices, stored):
        np.testing.assert_allclose(m.double().numpy(), ref, rtol=1e-6)
    if feedback == "shared":
        assert model.feedback.matrix.shape == (K, 7)


def test_no_gradient_crosses_a_feedback_point():
    model = dfatools.to_dfa(fc_net(), K)
    x, y = batch()
    inputs = []
    for i in (3, 6):  # the Linear layers reading a feedback point
        model[i].register_forward_hook(lambda m, inp, out: inputs.append(inp[0]))
    model(x)
    # Inputs that need no gradient: autograd never computes W^T delta for these layers.
    assert [t.requires_grad for t in inputs] == [False, False]


def test_cnn_gradients_match_plain_autograd():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(2, 3, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 6),
        nn.Tanh(),
        nn.Linear(6, K),
    )
    model = dfatools.to_dfa(net, K, seed=5)
    x, y = torch.randn(5, 1, 4, 4), torch.randint(0, K, (5,))
    F.cross_entropy(model(x), y).backward()
    # Independent: plain forward through the original modules, block by block.
    h1 = net[2](net[1](net[0](x)))  # (5, 2, 2, 2), d=8
    h2 = net[5](net[4](net[3](h1.detach())))  # (5, 12)
    h3 = net[7](net[6](h2.detach()))  # (5, 6)
    out = net[8](h3.detach())
    loss = F.cross_entropy(out, y)
    e = (torch.softmax(out, 1) - F.one_hot(y, K)).detach()
    sizes = [8, 12, 6]
    slices, _ = feedback_matrices("shared", True, sizes, seed=5)
    for h, sl, block in zip([h1, h2, h3], slices, [net[0], net[3], net[6]]):
        s = e.double().numpy() @ sl
        exp = torch.autograd.grad(
            h, [block.weight, block.bias], torch.from_numpy(s).float().view_as(h)
        )
        got = [
            model_block.grad
            for model_block in (block_in(model, block).weight, block_in(model, block).bias)
        ]
        for g, ex in zip(got, exp):
            torch.testing.assert_close(g, ex, rtol=1e-4, atol=1e-6)
    exp_top = torch.autograd.grad(loss, [net[8].weight, net[8].bias])
    torch.testing.assert_close(model[-2].weight.grad, exp_top[0])
    torch.testing.assert_close(model[-2].bias.grad, exp_top[1])


def block_in(model, original):
    """The copy of ``original`` inside the to_dfa model (same weights)."""
    for m in model.modules():
        if (
            type(m) is type(original)
            and hasattr(m, "weight")
            and torch.equal(m.weight, original.weight)
        ):
            return m
    raise AssertionError("layer not found")


def test_backprop_mode_equals_plain_sequential_exactly():
    net = fc_net()
    model = dfatools.to_dfa(net, K)
    x, y = batch()
    with model.backprop():
        F.cross_entropy(model(x), y).backward()
    F.cross_entropy(net(x), y).backward()
    for a, b in zip(model.parameters(), net.parameters()):
        assert torch.equal(a.grad, b.grad)
    assert model.feedback.dfa_enabled and all(p.dfa_enabled for p in model.feedback_points)


def test_to_dfa_leaves_caller_model_untouched_and_varies_batch_size():
    net = fc_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = dfatools.to_dfa(net, K)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for n in (9, 3, 17):
        x, y = batch(n=n)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert len(list(net.modules())) == 6


class HandWritten(nn.Module):
    """A custom model with points placed by hand, as shown in the README."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(6, 7), nn.Linear(7, 5), nn.Linear(5, K)
        self.p1, self.p2 = dfatools.FeedbackPoint(), dfatools.FeedbackPoint()
        self.dfa = dfatools.DFA([self.p1, self.p2], num_classes=K, seed=3)

    def forward(self, x):
        h = self.p1(torch.tanh(self.fc1(x)))
        h = self.p2(torch.tanh(self.fc2(h)))
        return self.dfa(self.fc3(h))


def test_hand_written_model_matches_formula_and_measures():
    model = HandWritten()
    net = fc_net()
    with torch.no_grad():
        for dst, src in zip([model.fc1, model.fc2, model.fc3], [net[0], net[2], net[4]]):
            dst.weight.copy_(src.weight)
            dst.bias.copy_(src.bias)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    expected, _ = numpy_fc_grads(net, x, y, "shared", True, "sum", seed=3)
    got = [
        p.grad.double().numpy()
        for m in (model.fc1, model.fc2, model.fc3)
        for p in (m.weight, m.bias)
    ]
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)
    assert len(dfatools.measure_alignment(model, x, y)) == 2


def test_alignment_matches_hand_computation():
    net = fc_net()
    model = dfatools.to_dfa(net, K, seed=2)
    x, y = batch(n=11)
    result = dfatools.measure_alignment(model, x, y)
    # Independent: true gradients at h1, h2 from plain autograd on the original net.
    a1 = net[0](x)
    h1 = net[1](a1)
    h2 = net[3](net[2](h1))
    out = net[4](h2)
    loss = F.cross_entropy(out, y)
    g1, g2, gw1, gw2 = torch.autograd.grad(
        loss, [h1, h2, net[0].weight, net[2].weight], retain_graph=True
    )
    e = (torch.softmax(out, 1) - F.one_hot(y, K)).detach().double().numpy()
    slices, _ = feedback_matrices("shared", True, [7, 5], seed=2)
    for point, (g, h, w, gw) in enumerate(
        [(g1, h1, net[0].weight, gw1), (g2, h2, net[2].weight, gw2)]
    ):
        bp = g.double().numpy() * len(x)
        s = e @ slices[point]
        cos = (bp * s).sum(1) / (np.linalg.norm(bp, axis=1) * np.linalg.norm(s, axis=1))
        assert result[point].cos_mean == pytest.approx(cos.mean(), abs=1e-5)
        assert result[point].cos_std == pytest.approx(cos.std(), abs=1e-5)
        assert result[point].angle_deg == pytest.approx(np.degrees(np.arccos(cos)).mean(), abs=1e-3)
        dfa_w = torch.autograd.grad(h, w, torch.from_numpy(s).float(), retain_graph=True)[
            0
        ].flatten()
        wcos = float(dfa_w @ gw.flatten() / (dfa_w.norm() * gw.norm()))
        assert result[point].weight_cos == pytest.approx(wcos, abs=1e-5)


def test_alignment_is_one_when_feedback_equals_output_weight():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, K))
    model = dfatools.to_dfa(net, K, normalize=False)
    x, y = batch()
    model(x).sum().backward()  # creates the (K, 8) matrix
    with torch.no_grad():
        model.feedback.matrix.copy_(model[-2].weight)
    top = dfatools.measure_alignment(model, x, y)[-1]
    assert top.cos_mean == pytest.approx(1.0, abs=1e-6)
    assert top.angle_deg < 0.1


def test_measure_alignment_leaves_model_untouched():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 7),
        nn.Dropout(0.5),
        nn.Tanh(),
        nn.BatchNorm1d(7),
        nn.Linear(7, 5),
        nn.Tanh(),
        nn.Linear(5, K),
    )
    model = dfatools.to_dfa(net, K)
    model.train()
    model[1].eval()  # a mixed state must come back as it was
    x, y = batch()
    state = {k: v.clone() for k, v in model.state_dict().items() if "matrix" not in k}
    rng = torch.get_rng_state()
    dfatools.measure_alignment(model, x, y)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == [m is not model[1] for m in model.modules()]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_state_dict_round_trip_restores_matrices_and_masks():
    def make(seed):
        torch.manual_seed(seed)
        net = nn.Sequential(
            nn.Linear(6, 7),
            nn.Tanh(),
            dfatools.Bottleneck(7, 7, 3, seed=seed),
            nn.Tanh(),
            nn.Linear(7, K),
        )
        return dfatools.to_dfa(net, K, feedback="independent", seed=seed)

    a, b = make(0), make(1)
    x, y = batch()
    a(x).sum().backward()
    b.load_state_dict(a.state_dict())  # b never ran forward: matrices are created from the dict
    for ma, mb in zip(a.feedback.matrices, b.feedback.matrices):
        assert torch.equal(ma, mb)
    assert torch.equal(a[3].weight_mask, b[3].weight_mask)
    assert torch.equal(a[3].bias_mask, b[3].bias_mask)
    a.zero_grad()
    F.cross_entropy(a(x), y).backward()
    F.cross_entropy(b(x), y).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa.grad, pb.grad)


@pytest.mark.parametrize("mode", ["dfa", "bp"])
def test_bottleneck_frozen_entries_do_not_move(mode):
    torch.manual_seed(0)
    layer = dfatools.Bottleneck(40, 50, 10, seed=4)
    net = nn.Sequential(nn.Linear(6, 40), nn.Tanh(), layer, nn.Tanh(), nn.Linear(50, K))
    model = dfatools.to_dfa(net, K)
    bneck = model[3]
    w0, b0 = bneck.weight.detach().clone(), bneck.bias.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(5):
        x, y = batch(seed=step)
        opt.zero_grad()
        if mode == "bp":
            with model.backprop():
                F.cross_entropy(model(x), y).backward()
        else:
            F.cross_entropy(model(x), y).backward()
        opt.step()
    frozen = ~bneck.weight_mask
    assert torch.equal(bneck.weight[frozen], w0[frozen])
    assert torch.equal(bneck.bias[~bneck.bias_mask], b0[~bneck.bias_mask])
    assert not torch.equal(bneck.weight[~frozen], w0[~frozen])
    assert bneck.weight_mask.float().mean().item() == pytest.approx(10 / 50, abs=0.03)


def test_prealign_aligns_linear_points():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.Tanh(),
        nn.Flatten(),
        nn.Linear(64, 48),
        nn.Tanh(),
        nn.Linear(48, 40),
        nn.Tanh(),
        nn.Linear(40, K),
    )
    model = dfatools.to_dfa(net, K)
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, K, (16,))
    conv_before = model[3].weight.detach().clone()  # the conv read by point 0
    dfatools.prealign(model, x, y)
    result = dfatools.measure_alignment(model, x, y)
    assert len(result) == 4
    assert all(r.cos_mean >= 0.99 for r in result[1:])  # points read by a Linear layer
    assert torch.equal(model[3].weight, conv_before)
    for layer in (model[7], model[10], model[13]):
        assert layer.weight.norm().item() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: dfatools.to_dfa(nn.Sequential(nn.Linear(3, 4)), 4), "two weight layers"),
        (
            lambda: dfatools.to_dfa(nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 5)), 4),
            "num_classes",
        ),
        (lambda: dfatools.to_dfa(fc_net(), K, feedback="both"), "feedback"),
        (lambda: dfatools.to_dfa(fc_net(), K, error="max"), "error"),
        (lambda: dfatools.Bottleneck(4, 5, 0), "size"),
        (lambda: dfatools.Bottleneck(4, 5, 6), "size"),
        (lambda: dfatools.DFA([], 3), "FeedbackPoint"),
    ],
)
def test_bad_use_raises_clear_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="nn.Sequential"):
        dfatools.to_dfa(HandWritten(), K)
    with pytest.raises(TypeError, match="FeedbackPoint"):
        dfatools.DFA([nn.Identity()], K)


def test_output_size_mismatch_at_forward():
    model = HandWritten()
    model.dfa.num_classes = 3
    with pytest.raises(ValueError, match="num_classes"):
        model(torch.randn(2, 6))


def test_undefined_fraction_counts_samples_with_zero_error():
    """A sample whose softmax equals its one-hot target exactly has e = 0: its cosine is
    undefined, counted as 0, and reported in ``undefined_frac``."""
    net = fc_net()
    model = dfatools.to_dfa(net, K, seed=2)
    x, y = batch(n=8)
    big = torch.zeros(8, K)  # huge logits for class 0 on samples 0..2: softmax is exactly one-hot
    big[:3, 0] = 1e4
    y = y.clone()
    y[:3] = 0
    wrapped = nn.Sequential(model, _AddLogits(big))
    result = dfatools.measure_alignment(wrapped, x, y)
    for a in result:
        assert a.undefined_frac == pytest.approx(3 / 8)
    # Independent: the mean over the 5 defined samples, times 5/8, is cos_mean.
    full = dfatools.measure_alignment(model, x[3:], y[3:])
    for a, b in zip(result, full):
        assert a.cos_mean == pytest.approx(b.cos_mean * 5 / 8, abs=1e-5)
        assert b.undefined_frac == 0.0


class _AddLogits(nn.Module):
    """Adds fixed logits ``(N, K)``; stands for a saturated output on chosen samples."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.logits[: len(y)]


def test_exact_top_trains_the_top_layers_by_backprop():
    """exact_top=2 (the 2019 CNN placement): no point before the output layer, so the two top
    weight layers get their true gradients and the layers below get DFA signals."""
    net = nn.Sequential(
        nn.Linear(6, 7),
        nn.Tanh(),
        nn.Linear(7, 5),
        nn.Tanh(),
        nn.Linear(5, 3),
        nn.Tanh(),
        nn.Linear(3, K),
    )
    model = dfatools.to_dfa(net, K, seed=1, exact_top=2)
    assert len(model.feedback_points) == 2
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    loss = F.cross_entropy(net(x), y)
    bp = torch.autograd.grad(loss, [net[4].weight, net[6].weight, net[2].weight])
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    assert torch.allclose(weights[2].grad, bp[0], atol=1e-6)
    assert torch.allclose(weights[3].grad, bp[1], atol=1e-6)
    assert not torch.allclose(weights[1].grad, bp[2], atol=1e-3)  # DFA below the top two
    with pytest.raises(ValueError, match="exact_top"):
        dfatools.to_dfa(net, K, exact_top=4)


def test_prealign_does_not_depend_on_rounding():
    """The output layer's least-squares problem is rank-deficient (rows of softmax - onehot sum
    to 0): a rounding-level singular value must not be inverted, or float32 and float64 (and so
    CPU and CUDA) give weights that differ by a large component along the all-ones output."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, K))
    single = dfatools.to_dfa(net, K)
    double = dfatools.to_dfa(copy.deepcopy(net).double(), K)
    x, y = batch(n=64)
    dfatools.prealign(single, x, y)
    dfatools.prealign(double, x.double(), y)
    for a, b in zip(single, double):
        if isinstance(a, nn.Linear):
            assert (a.weight.double() - b.weight).norm() / b.weight.norm() < 1e-4
