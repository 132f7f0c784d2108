"""fa, sign, drtp, shallow and bp against independent computations (numpy formulas, plain
autograd on the original modules)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_dfatools import K, batch, fc_net, feedback_matrices, numpy_fc_forward, numpy_fc_grads
from torch import nn

import dfatools
from dfatools.backward_weights import backward_weight


def conv_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.Tanh(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 2 * 2, 6),
        nn.Tanh(),
        nn.Linear(6, K),
    )


def conv_batch(n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 8, 8, generator=g), torch.randint(0, K, (n,), generator=g)


def weight_layers(model):
    return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def grads_of(model):
    return [p.grad for p in model.parameters()]


def plain_grads(net, x, y):
    return torch.autograd.grad(F.cross_entropy(net(x), y), list(net.parameters()))


def tie_feedback_to_weights(model):
    with torch.no_grad():
        for layer in weight_layers(model):
            layer.feedback_weight.copy_(layer.weight)


# -- fa and sign -----------------------------------------------------------------------------------
@pytest.mark.parametrize("make_net, make_batch", [(fc_net, batch), (conv_net, conv_batch)])
def test_fa_with_feedback_equal_to_weights_gives_bp_gradients(make_net, make_batch):
    net = make_net()
    model = dfatools.to_method(net, "fa", K, seed=3)
    tie_feedback_to_weights(model)
    x, y = make_batch()
    F.cross_entropy(model(x), y).backward()
    for got, expected in zip(grads_of(model), plain_grads(net, x, y)):
        assert torch.equal(got, expected)


def hand_fc_backward(net, x, y, backward_mats):
    """Gradients of the tanh FC net with ``backward_mats[l]`` in place of ``W_l`` in the input
    gradient of weight layer ``l`` (float64 numpy), in parameter order."""
    _, x, h1, h2, p = numpy_fc_forward(net, x)
    d3 = (p - np.eye(K)[y.numpy()]) / len(x)
    d2 = (d3 @ backward_mats[2]) * (1 - h2**2)
    d1 = (d2 @ backward_mats[1]) * (1 - h1**2)
    return [d1.T @ x, d1.sum(0), d2.T @ h1, d2.sum(0), d3.T @ h2, d3.sum(0)]


def hand_fa_matrices(shapes, seed):
    """B_l as documented: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), drawn in layer order from a
    generator seeded by seed XOR the 64-bit golden ratio."""
    gen = torch.Generator().manual_seed(seed ^ 0x9E3779B97F4A7C15)
    return [
        ((torch.rand(shape, generator=gen) * 2 - 1) / math.sqrt(math.prod(shape[1:])))
        for shape in shapes
    ]


@pytest.mark.parametrize("method", ["fa", "sign"])
def test_fa_and_sign_match_hand_written_backward(method):
    net = fc_net()
    model = dfatools.to_method(net, method, K, seed=5)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    weights = [net[i].weight.detach() for i in (0, 2, 4)]
    if method == "fa":
        mats = hand_fa_matrices([w.shape for w in weights], seed=5)
        for layer, B in zip(weight_layers(model), mats):
            torch.testing.assert_close(layer.feedback_weight, B, rtol=1e-6, atol=0)
    else:
        mats = [torch.sign(w) * w.abs().mean() for w in weights]
    expected = hand_fc_backward(net, x, y, [B.double().numpy() for B in mats])
    for got, e in zip(grads_of(model), expected):
        np.testing.assert_allclose(got.double().numpy(), e, rtol=1e-4, atol=1e-7)


class _Surrogate(nn.Module):
    """Independent FA/sign layer: ``layer(x.detach()) + g(x) - g(x).detach()`` with
    ``g = layer with weight B``: value of the layer, input gradient through ``B``, by autograd."""

    def __init__(self, layer, B):
        super().__init__()
        self.layer, self.B = layer, B

    def forward(self, x):
        if isinstance(self.layer, nn.Conv2d):
            via_b = F.conv2d(x, self.B, None, self.layer.stride, self.layer.padding)
        else:
            via_b = F.linear(x, self.B)
        return self.layer(x.detach()) + via_b - via_b.detach()


@pytest.mark.parametrize("method", ["fa", "sign"])
def test_fa_and_sign_on_a_cnn_match_an_independent_autograd_surrogate(method):
    net = conv_net()
    model = dfatools.to_method(net, method, K, seed=2)
    x, y = conv_batch()
    F.cross_entropy(model(x), y).backward()
    mats = [backward_weight(layer).clone() for layer in weight_layers(model)]
    surrogate = nn.Sequential(
        *[_Surrogate(m, mats.pop(0)) if isinstance(m, (nn.Linear, nn.Conv2d)) else m for m in net]
    )
    for got, expected in zip(grads_of(model), plain_grads(surrogate, x, y)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-7)
    # ... and they are not the BP gradients below the top layer.
    assert not torch.allclose(grads_of(model)[0], plain_grads(net, x, y)[0], atol=1e-4)


def test_fa_matrices_are_seeded_buffers_and_leave_the_global_rng_alone():
    net = fc_net()
    rng = torch.get_rng_state()
    a, b, c = dfatools.to_fa(net, seed=1), dfatools.to_fa(net, seed=1), dfatools.to_fa(net, seed=2)
    assert torch.equal(rng, torch.get_rng_state())
    assert all(
        torch.equal(la.feedback_weight, lb.feedback_weight)
        for la, lb in zip(weight_layers(a), weight_layers(b))
    )
    assert not torch.equal(weight_layers(a)[1].feedback_weight, weight_layers(c)[1].feedback_weight)
    assert [k for k in a.state_dict() if k.endswith("feedback_weight")] == [
        "0.feedback_weight",
        "2.feedback_weight",
        "4.feedback_weight",
    ]
    c.load_state_dict(a.state_dict())
    x, y = batch()
    F.cross_entropy(a(x), y).backward()
    F.cross_entropy(c(x), y).backward()
    assert all(torch.equal(ga, gc) for ga, gc in zip(grads_of(a), grads_of(c)))
    assert not any(hasattr(m, "feedback_method") for m in net.modules())  # net untouched


def test_sign_follows_the_current_weights_and_adds_no_buffer():
    model = dfatools.to_sign(fc_net())
    assert list(model.state_dict()) == list(fc_net().state_dict())
    layer = model[2]
    with torch.no_grad():
        layer.weight.mul_(-3)
    w = layer.weight.detach()
    torch.testing.assert_close(backward_weight(layer), torch.sign(w) * w.abs().mean())


def test_backprop_mode_and_exact_layers_give_bp_gradients():
    net = conv_net()
    model = dfatools.to_method(net, "sign", K)
    x, y = conv_batch()
    with model.backprop():
        F.cross_entropy(model(x), y).backward()
    for got, expected in zip(grads_of(model), plain_grads(net, x, y)):
        assert torch.equal(got, expected)
    plain = dfatools.to_fa(net)
    with dfatools.exact_layers(plain):
        got = torch.autograd.grad(F.cross_entropy(plain(x), y), list(plain.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(got, plain_grads(net, x, y)))
    assert all(m.feedback_enabled for m in weight_layers(plain))


def test_converted_layer_allows_in_place_activation():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Linear(6, 8),
        nn.ReLU(inplace=True),
        nn.Linear(8, 8),
        nn.ReLU(inplace=True),
        nn.Linear(8, K),
    )
    model = dfatools.to_fa(net, seed=0)
    tie_feedback_to_weights(model)
    x, y = batch()
    F.cross_entropy(model(x), y).backward()
    for got, expected in zip(grads_of(model), plain_grads(net, x, y)):
        assert torch.equal(got, expected)


@pytest.mark.parametrize(
    "build, match",
    [
        (
            lambda: dfatools.to_fa(
                nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"))
            ),
            "padding_mode",
        ),
        (lambda: dfatools.to_sign(nn.Sequential(nn.Conv2d(1, 2, 3, padding="same"))), "padding"),
        (lambda: dfatools.to_fa(dfatools.to_fa(fc_net())), "already"),
        (lambda: dfatools.to_fa(nn.Sequential(nn.Tanh())), "no nn.Linear"),
        (lambda: dfatools.to_method(fc_net(), "hebb", K), "unknown method"),
        (lambda: dfatools.to_dfa(fc_net(), K, signal="noise"), "signal"),
    ],
)
def test_bad_use_raises_clear_value_error(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_resnet18_converts_and_trains():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([3, 7])
    n_layers = len(weight_layers(net))
    rng = torch.get_rng_state()
    fa, sign = dfatools.to_fa(net, seed=0), dfatools.to_sign(net)
    assert torch.equal(rng, torch.get_rng_state())
    assert len([k for k in fa.state_dict() if k.endswith("feedback_weight")]) == n_layers == 21
    assert fa.layer1[0].conv1.feedback_weight.shape == net.layer1[0].conv1.weight.shape
    bp = plain_grads(net, x, y)
    for model in (fa, sign):
        F.cross_entropy(model(x), y).backward()
        grads = grads_of(model)
        torch.testing.assert_close(grads[-2], bp[-2])  # fc: its true gradient
        assert not torch.allclose(grads[0], bp[0], atol=1e-5)  # conv1: through B
    tie_feedback_to_weights(fa)
    fa.zero_grad()
    F.cross_entropy(fa(x), y).backward()
    for got, expected in zip(grads_of(fa), bp):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


# -- drtp ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("feedback", ["shared", "independent"])
@pytest.mark.parametrize("error", ["sum", "mean"])
def test_drtp_gradients_are_the_target_projection(feedback, error):
    net = fc_net()
    model = dfatools.to_method(net, "drtp", K, seed=4, feedback=feedback, error=error)
    x, y = batch()
    model.feedback.set_target(y)
    F.cross_entropy(model(x), y).backward()
    onehot = np.eye(K)[y.numpy()]
    # The sign: -onehot stands for e = softmax - onehot (negative at the target class).
    drtp_error = -onehot if error == "sum" else -onehot / len(x)
    expected, _ = numpy_fc_grads(net, x, y, feedback, True, error, seed=4, hidden_error=drtp_error)
    for got, e in zip(grads_of(model), expected):
        np.testing.assert_allclose(got.double().numpy(), e, rtol=1e-4, atol=1e-7)


def test_drtp_signals_do_not_depend_on_the_output_and_need_the_target():
    model = dfatools.to_method(fc_net(), "drtp", K, seed=4)
    x, y = batch()
    hs = []
    for point in model.feedback_points:
        point.register_forward_hook(lambda m, inp, out: hs.append(inp[0]))
    loss = F.cross_entropy(model(x), y)
    with pytest.raises(RuntimeError, match="set_target"):
        loss.backward()
    hs.clear()
    out = model(x)
    model.feedback.set_target(y)
    got = torch.autograd.grad(out.sum() * 0 + F.cross_entropy(out, y), hs)
    slices, _ = feedback_matrices("shared", True, [7, 5], seed=4)
    for g, sl in zip(got, slices):
        expected = -np.eye(K)[y.numpy()] @ sl
        np.testing.assert_allclose(g.double().numpy(), expected, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="class indices"):
        model.feedback.set_target(torch.zeros(len(y), K))


# -- shallow and bp --------------------------------------------------------------------------------
def test_shallow_leaves_every_hidden_weight_unchanged():
    model = dfatools.to_method(conv_net(), "shallow", K)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(4):
        x, y = conv_batch(seed=step)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    top = weight_layers(model)[-1]
    # Not even a zero gradient: the backward never enters the hidden blocks (cheaper than DFA).
    assert [p.grad is None for p in model.parameters()] == [True] * 6 + [False] * 2
    hidden = [k for k in before if not k.startswith(f"{len(model) - 2}.")]
    assert hidden and all(torch.equal(before[k], model.state_dict()[k]) for k in hidden)
    assert not torch.equal(before[f"{len(model) - 2}.weight"], top.weight)
    assert "matrix" not in " ".join(model.state_dict())


def test_bp_method_trains_by_plain_backward():
    net = conv_net()
    model = dfatools.to_method(net, "bp", K)
    x, y = conv_batch()
    F.cross_entropy(model(x), y).backward()
    for got, expected in zip(grads_of(model), plain_grads(net, x, y)):
        assert torch.equal(got, expected)


# -- alignment -------------------------------------------------------------------------------------
@pytest.mark.parametrize("make_net, make_batch", [(fc_net, batch), (conv_net, conv_batch)])
def test_fa_alignment_is_one_where_feedback_equals_weights(make_net, make_batch):
    model = dfatools.to_method(make_net(), "fa", K, seed=1)
    tie_feedback_to_weights(model)
    x, y = make_batch()
    for a in dfatools.measure_alignment(model, x, y):
        assert a.cos_mean == pytest.approx(1.0, abs=1e-5)
        assert a.weight_cos == pytest.approx(1.0, abs=1e-5)


def per_sample_cos(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("method", ["fa", "sign", "drtp"])
def test_alignment_of_each_method_matches_hand_computation(method):
    net = fc_net()
    model = dfatools.to_method(net, method, K, seed=6)
    x, y = batch(n=11)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    result = dfatools.measure_alignment(model, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    W, xs, h1, h2, p = numpy_fc_forward(net, x)
    e = p - np.eye(K)[y.numpy()]
    true2 = e @ W[2]
    true1 = (true2 * (1 - h2**2)) @ W[1]
    if method == "drtp":
        slices, _ = feedback_matrices("shared", True, [7, 5], seed=6)
        sig1, sig2 = -np.eye(K)[y.numpy()] @ slices[0], -np.eye(K)[y.numpy()] @ slices[1]
    else:
        mats = [backward_weight(m).double().numpy() for m in weight_layers(model)]
        sig2 = e @ mats[2]
        sig1 = (sig2 * (1 - h2**2)) @ mats[1]
    for a, true, sig, below in zip(result, (true1, true2), (sig1, sig2), (xs, h1)):
        cos = per_sample_cos(true, sig)
        assert a.cos_mean == pytest.approx(cos.mean(), abs=1e-5)
        assert a.angle_deg == pytest.approx(np.degrees(np.arccos(cos)).mean(), abs=1e-3)
        h = h1 if below is xs else h2
        gw_true = ((true * (1 - h**2)).T @ below).ravel()
        gw_sig = ((sig * (1 - h**2)).T @ below).ravel()
        wcos = gw_true @ gw_sig / (np.linalg.norm(gw_true) * np.linalg.norm(gw_sig))
        assert a.weight_cos == pytest.approx(wcos, abs=1e-5)


def test_shallow_alignment_is_undefined_everywhere():
    model = dfatools.to_method(fc_net(), "shallow", K)
    x, y = batch()
    for a in dfatools.measure_alignment(model, x, y):
        assert (a.cos_mean, a.undefined_frac, a.weight_cos) == (0.0, 1.0, 0.0)


# -- the trainer and the experiments ---------------------------------------------------------------
@pytest.mark.parametrize("method", ["fa", "sign", "drtp", "shallow"])
def test_trainer_runs_every_method_and_resumes_it_exactly(tmp_path, method):
    from test_train import CPU, metrics, small

    from mltools.training import train

    a, b = tmp_path / "a", tmp_path / "b"
    cfg = small(experiment=f"fc-{method}", method=method, epochs=2, train_samples=128)
    assert train.train_run(cfg, a, CPU, quiet=True) == "done"
    train.train_run(small(**{**cfg.__dict__, "epochs": 1}), b, CPU, quiet=True)
    train.train_run(cfg, b, CPU, quiet=True)  # resumes at epoch 2 from the checkpoint
    records = metrics(a)
    assert records == metrics(b)
    assert [len(r["alignment"]) for r in records] == [3, 3, 3]
    if method == "shallow":
        assert all(x["undefined_frac"] == 1.0 for r in records for x in r["alignment"])
        train.seed_everything(cfg.seed)
        initial = train.build_model(cfg, (1, 8, 8), 10).state_dict()
        final = torch.load(a / "model.pt", weights_only=True)
        assert all(torch.equal(initial[k], final[k]) for k in initial if not k.startswith("10."))
        assert not torch.equal(initial["10.weight"], final["10.weight"])
    else:
        assert records[-1]["train_top1"] > records[0]["train_top1"]


def test_method_experiments_are_listed_but_not_run_by_default():
    from mltools.studies.experiments import DEFAULT_EXPERIMENTS, EXPERIMENTS, GROUPS

    others = ("fa", "sign", "drtp", "shallow", "brsf", "frsf")
    new = [f"{arch}-{m}" for arch in ("fc", "conv") for m in others]
    assert all(EXPERIMENTS[n][1]["method"] == n.split("-")[1] for n in new)
    assert not set(new) & set(DEFAULT_EXPERIMENTS) and len(DEFAULT_EXPERIMENTS) == 18
    assert set(GROUPS["methods"]) == {*new, "fc-tanh", "conv-tanh", "fc-bp", "conv-bp"}


def test_mltools_names_the_same_methods():
    """mltools keeps its own copy of the names (no torch for reports and argument parsing)."""
    from mltools.studies.experiments import METHODS

    assert METHODS == dfatools.METHODS
