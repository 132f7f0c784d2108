"""DFA and the other methods on models that are not an nn.Sequential (DESIGN.md 9): a torchvision
ResNet with points at its residual blocks and a Transformer language model with per-token
outputs, checked against gradients computed by the definition with plain autograd on the
original modules."""

import io
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.resnet import BasicBlock

import dfatools

K, V, T, D_MODEL = 10, 11, 6, 16


# -- models ----------------------------------------------------------------------------------------
class TinyLM(nn.Module):
    """Token embedding + learned positions, a 2-layer causal nn.TransformerEncoder, a Linear head.

    Shape: ``(N, T)`` token indices in, ``(N, T, V)`` logits out.
    """

    def __init__(self, vocab=V, d=D_MODEL, length=T):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.1)
        layer = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(d, vocab)

    def causal(self, t):
        return nn.Transformer.generate_square_subsequent_mask(t)

    def forward(self, tokens):
        h = self.embed(tokens) + self.pos[: tokens.shape[1]]
        h = self.encoder(h, mask=self.causal(tokens.shape[1]), is_causal=True)
        return self.head(h)


def resnet(seed=0):
    torch.manual_seed(seed)
    return resnet18(num_classes=K)


def lm(seed=0):
    torch.manual_seed(seed)
    return TinyLM()


def image_batch(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, K, (n,), generator=g)


def token_batch(n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, V, (n, T + 1), generator=g)
    return tokens[:, :-1], tokens[:, 1:]


def copy_weights(converted, original):
    original.load_state_dict(dfatools.original_state_dict(converted))
    return original


# -- the definition, by hand -----------------------------------------------------------------------
def resnet_blocks(net):
    """The forward pass of a torchvision ResNet as (stem, [blocks], head) callables."""
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    blocks = [b for layer in (net.layer1, net.layer2, net.layer3, net.layer4) for b in layer]

    def head(h):
        return net.fc(torch.flatten(net.avgpool(h), 1))

    return stem, blocks, head


def lm_blocks(net):
    mask = net.causal(T)

    def stem(tokens):
        return net.embed(tokens) + net.pos[: tokens.shape[1]]

    blocks = [
        (lambda h, layer=layer: layer(h, src_mask=mask, is_causal=True))
        for layer in net.encoder.layers
    ]
    return stem, blocks, net.head


def definition_grads(net, parts, x, y, signal_of):
    """Every parameter's gradient by DESIGN.md 2 and 9: each block reads the detached output of
    the block below (the first one the stem's output), the head reads the detached top output
    and gets the true gradient, and block ``l`` back-propagates ``signal_of(e, y, l, shapes)``
    through itself only. ``e``: softmax minus one-hot per position."""
    stem, blocks, head = parts
    hs, h = [], stem(x)
    for i, block in enumerate(blocks):
        h = block(h if i == 0 else h.detach())
        hs.append(h)
    out = head(hs[-1].detach())
    loss = F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))
    e = (torch.softmax(out, -1) - F.one_hot(y, out.shape[-1])).reshape(-1, out.shape[-1])
    signals = [signal_of(e.detach(), y, i, [h.shape for h in hs]) for i in range(len(hs))]
    params = list(net.parameters())
    grads = torch.autograd.grad([loss, *hs], params, [None, *signals], allow_unused=True)
    return {n: g for (n, _), g in zip(net.named_parameters(), grads)}


def dfa_signal(matrix, positions="flat"):
    """s_l = e @ M[:, :d_l] * sqrt(D / d_l), per position, shaped like h_l. ``"shared"``, for a
    block ``(N, C, H, W)`` under an ``(N, K)`` output: d_l = C, the same signal at each of its
    H W positions, divided by sqrt(H W)."""

    def signal_of(e, y, i, shapes):
        shape, D = shapes[i], matrix.shape[1]
        if positions == "shared" and len(shape) == 4:
            n, c, extra = shape[0], shape[1], shape[2] * shape[3]
            s = e @ matrix[:, :c] * math.sqrt(D / c) / math.sqrt(extra)
            return s.reshape(n, c, 1, 1).expand(shape)
        lead = e.shape[0]
        sizes = [math.prod(s) // lead for s in shapes]
        d, D = sizes[i], matrix.shape[1]
        return ((e @ matrix[:, :d]) * math.sqrt(D / d)).reshape(shapes[i])

    return signal_of


def drtp_signal(matrix):
    def signal_of(e, y, i, shapes):
        lead = e.shape[0]
        sizes = [math.prod(s) // lead for s in shapes]
        d, D = sizes[i], matrix.shape[1]
        return (-matrix[y.reshape(-1), :d] * math.sqrt(D / d)).reshape(shapes[i])

    return signal_of


def converted_grads(model, x, y):
    out = model(x)
    model.feedback.set_target(y)
    dfatools.cross_entropy(out, y).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def assert_same_grads(got, want, rtol=1e-4, atol=1e-6):
    assert got.keys() == want.keys()
    for name in want:
        g, w = got[name], want[name]
        if w is None:
            assert g is None or torch.count_nonzero(g) == 0, name
            continue
        assert g is not None, name
        torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=name)


# -- DFA gradients ---------------------------------------------------------------------------------
CASES = {
    "resnet18": (resnet, [BasicBlock], image_batch, resnet_blocks),
    "lm": (lm, [nn.TransformerEncoderLayer], token_batch, lm_blocks),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("method", ["dfa", "drtp"])
def test_one_backward_gives_the_definition(case, method):
    """With ``positions="flat"``, the paper's rule: one projection per element of a block."""
    make, points, make_batch, parts = CASES[case]
    num_classes = V if case == "lm" else K
    model = dfatools.to_method(make(), method, num_classes, seed=4, points=points, positions="flat")
    x, y = make_batch()
    got = converted_grads(model, x, y)
    matrix = model.feedback.matrix
    net = copy_weights(model, make(seed=9))
    signal_of = dfa_signal(matrix) if method == "dfa" else drtp_signal(matrix)
    want = definition_grads(net, parts(net), x, y, signal_of)
    assert_same_grads(got, want)


def test_points_share_the_signal_over_positions_by_default():
    """A ResNet's blocks under its pooled (N, K) output: by default one projection per channel,
    repeated over the block's positions; D is then the widest block's 512 channels."""
    model = dfatools.to_dfa(resnet(), K, seed=4, points=[BasicBlock])
    x, y = image_batch()
    got = converted_grads(model, x, y)
    matrix = model.feedback.matrix
    assert matrix.shape == (K, 512)
    net = copy_weights(model, resnet(seed=9))
    want = definition_grads(net, resnet_blocks(net), x, y, dfa_signal(matrix, "shared"))
    assert_same_grads(got, want)


def test_points_keep_class_keys_and_weights():
    original = resnet()
    model = dfatools.to_dfa(original, K, points=[BasicBlock])
    assert type(model) is type(original)
    x, _ = image_batch()
    model(x)  # the matrix is created at the first forward pass with a gradient
    assert set(model.state_dict()) == set(original.state_dict()) | {"feedback.matrix"}
    names = [p.name for p in model.feedback.points]
    assert names == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    fresh = resnet(seed=5)  # weights of the converted model load into the original class
    fresh.load_state_dict(dfatools.original_state_dict(model))
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x))
    back = dfatools.to_dfa(resnet(seed=6), K, points=[BasicBlock])  # and back
    missing, unexpected = back.load_state_dict(original.state_dict(), strict=False)
    assert missing == [] and unexpected == []  # the matrix does not exist before a forward pass


def test_sequential_with_named_points_puts_the_point_at_module_outputs():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    by_rule = dfatools.to_dfa(net, 3, seed=2)
    by_name = dfatools.to_dfa(net, 3, seed=2, points=["1", "3"])
    x, y = torch.randn(7, 4), torch.randint(0, 3, (7,))
    for m in (by_rule, by_name):
        F.cross_entropy(m(x), y).backward()
    rule = [p.grad for p in by_rule.parameters()]
    named = [p.grad for p in by_name.parameters()]
    for a, b in zip(rule, named):
        torch.testing.assert_close(a, b)
    assert list(by_name.state_dict())[:6] == list(net.state_dict())


# -- bp, fa, backprop() ----------------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES)
def test_bp_and_backprop_are_plain_backward_on_the_original(case):
    make, points, make_batch, _ = CASES[case]
    k = V if case == "lm" else K
    x, y = make_batch()
    original = make()
    want = torch.autograd.grad(dfatools.cross_entropy(original(x), y), list(original.parameters()))
    bp = dfatools.to_method(make(), "bp", k, points=points)
    dfa = dfatools.to_dfa(make(), k, points=points)
    got_bp = converted_grads(bp, x, y)
    with dfatools.backprop(dfa):
        got_dfa = converted_grads(dfa, x, y)
    for got in (got_bp, got_dfa):
        for g, w in zip(got.values(), want):
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_fa_with_feedback_equal_to_weights_gives_bp_on_the_resnet():
    x, y = image_batch()
    original = resnet()
    want = torch.autograd.grad(F.cross_entropy(original(x), y), list(original.parameters()))
    model = dfatools.to_method(resnet(), "fa", K, seed=3, points=[BasicBlock])
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "feedback_weight"):
                m.feedback_weight.copy_(m.weight)
    got = converted_grads(model, x, y)
    for g, w in zip(got.values(), want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


# -- brsf and frsf: a hand-written backward --------------------------------------------------------
def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def hand_sign_concordant(net, x, y, magnitudes):
    """Weight gradients of the 3-layer tanh net when layer l's input gradient goes through
    ``|R_l| * sign(W_l)`` (numpy); ``magnitudes``: the ``|R|`` of layers 3 and 2."""
    W = [m.weight.detach().numpy().astype(np.float64) for m in net if isinstance(m, nn.Linear)]
    b = [m.bias.detach().numpy().astype(np.float64) for m in net if isinstance(m, nn.Linear)]
    x = x.numpy().astype(np.float64)
    h1 = np.tanh(x @ W[0].T + b[0])
    h2 = np.tanh(h1 @ W[1].T + b[1])
    out = h2 @ W[2].T + b[2]
    p = np.exp(out - out.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    d3 = (p - np.eye(3)[y.numpy()]) / len(x)
    d2 = (d3 @ (magnitudes[0] * np.sign(W[2]))) * (1 - h2**2)
    d1 = (d2 @ (magnitudes[1] * np.sign(W[1]))) * (1 - h1**2)
    return [d1.T @ x, d2.T @ h1, d3.T @ h2]


@pytest.mark.parametrize("method", ["frsf", "brsf"])
def test_random_magnitude_sign_feedback_matches_a_hand_backward(method):
    net = small_net()
    model = dfatools.to_method(net, method, 3, seed=5)
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    torch.manual_seed(123)
    F.cross_entropy(model(x), y).backward()
    fa = dfatools.to_method(net, "fa", 3, seed=5)  # frsf and brsf keep |B_l| of fa's draw
    layers = [m for m in fa.modules() if isinstance(m, nn.Linear)]
    mags = [layers[2].feedback_weight.abs(), layers[1].feedback_weight.abs()]
    if method == "brsf":  # read from a random offset at each backward, top layer first
        torch.manual_seed(123)
        offsets = [int(torch.randint(m.numel(), ())) for m in mags]
        mags = [m.flatten().roll(-k).view(m.shape) for m, k in zip(mags, offsets)]
    want = hand_sign_concordant(net, x, y, [m.double().numpy() for m in mags])
    got = [m.weight.grad for m in model.modules() if isinstance(m, nn.Linear)]
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-4, atol=1e-6)


def test_brsf_and_sign_on_channels_last_convolutions():
    """A channels-last model (common on GPUs) trains under brsf and sign with the gradients of
    the same model in the default layout, the same offsets drawn."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 5, 3, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(5 * 6 * 6, 3),
    )  # fmt: skip
    x, y = torch.randn(2, 3, 6, 6), torch.tensor([0, 2])
    for method in ("brsf", "sign"):
        grads = []
        for layout in (torch.contiguous_format, torch.channels_last):
            model = dfatools.to_method(net, method, 3).to(memory_format=layout)
            torch.manual_seed(7)
            F.cross_entropy(model(x.contiguous(memory_format=layout)), y).backward()
            grads.append([p.grad for p in model.parameters()])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_brsf_redraws_and_alignment_leaves_the_rng_alone():
    model = dfatools.to_method(small_net(), "brsf", 3)
    x, y = torch.randn(9, 6), torch.randint(0, 3, (9,))
    grads = []
    for _ in range(2):
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        grads.append(model[0].weight.grad.clone())
    assert not torch.allclose(grads[0], grads[1])  # new magnitudes at every batch
    state = torch.get_rng_state()
    dfatools.measure_alignment(model, x, y)
    assert torch.equal(state, torch.get_rng_state())


# -- alignment, PAI, checkpoints -------------------------------------------------------------------
def test_alignment_is_per_position():
    model = dfatools.to_dfa(lm(), V, seed=4, points=[nn.TransformerEncoderLayer])
    x, y = token_batch()
    records = dfatools.measure_alignment(model, x, y)
    assert [r.name for r in records] == ["encoder.layers.0", "encoder.layers.1"]
    net = copy_weights(model, lm(seed=9))
    stem, blocks, head = lm_blocks(net)
    hs, h = [], stem(x)
    for block in blocks:  # backprop: nothing detached
        h = block(h)
        hs.append(h)
    out = head(h)
    loss = F.cross_entropy(out.reshape(-1, V), y.reshape(-1))
    grads = torch.autograd.grad(loss, hs)
    e = (torch.softmax(out, -1) - F.one_hot(y, V)).reshape(-1, V).detach()
    M = model.feedback.matrix
    for r, g in zip(records, grads):
        s = e @ M  # every point has D_MODEL = D features per position
        cos = F.cosine_similarity(g.reshape(-1, D_MODEL), s, dim=1)
        assert r.cos_mean == pytest.approx(float(cos.mean()), abs=1e-5)
        assert r.cos_std == pytest.approx(float(cos.std(correction=0)), abs=1e-5)


def test_alignment_record_per_block_of_the_resnet():
    model = dfatools.to_dfa(resnet(), K, points=[BasicBlock])
    x, y = image_batch()
    records = dfatools.measure_alignment(model, x, y)
    assert len(records) == 8 and all(-1 <= r.cos_mean <= 1 for r in records)
    assert all(not math.isnan(r.weight_cos) for r in records)


def test_prealign_solves_the_head_of_the_lm_and_skips_the_rest(caplog):
    model = dfatools.to_dfa(lm(), V, seed=4, points=[nn.TransformerEncoderLayer])
    x, y = token_batch()
    model(x)  # creates the matrix
    with torch.no_grad():
        out = model.eval()(x)
        h_top = model.encoder(model.embed(x) + model.pos[:T], mask=model.causal(T), is_causal=True)
    e = (torch.softmax(out, -1) - F.one_hot(y, V)).reshape(-1, V).double().numpy()
    signal = e @ model.feedback.matrix.double().numpy()  # (P, d): the top point's s_l
    delta = e  # the head's output is y: P * dL/dy = e
    tol = max(delta.shape) * np.finfo(np.float32).eps
    want = np.linalg.pinv(delta, rcond=tol) @ signal
    want /= np.linalg.norm(want)
    layer0 = model.encoder.layers[0].linear1.weight.detach().clone()
    with caplog.at_level(logging.WARNING, logger="dfatools"):
        dfatools.prealign(model, x, y)
    np.testing.assert_allclose(model.head.weight.detach().numpy(), want, rtol=1e-3, atol=1e-5)
    assert torch.equal(model.encoder.layers[0].linear1.weight, layer0)  # read by attention
    assert "PAI leaves point 0" in caplog.text
    assert h_top.shape == (4, T, D_MODEL)


def test_weights_only_checkpoint_keeps_the_feedback():
    x, y = image_batch()
    for method in ("dfa", "fa"):
        model = dfatools.to_method(resnet(), method, K, seed=3, points=[BasicBlock])
        converted_grads(model, x, y)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        buffer.seek(0)
        state = torch.load(buffer, weights_only=True)
        fresh = dfatools.to_method(resnet(seed=8), method, K, seed=11, points=[BasicBlock])
        fresh.load_state_dict(state)
        for key, value in model.state_dict().items():
            assert torch.equal(fresh.state_dict()[key], value), key


def test_deepcopy_of_a_converted_model_trains_itself():
    import copy

    model = dfatools.to_dfa(lm(), V, points=[nn.TransformerEncoderLayer])
    twin = copy.deepcopy(model)
    x, y = token_batch()
    converted_grads(twin, x, y)
    assert all(p.grad is None for p in model.parameters())
    assert twin.encoder.layers[0].linear1.weight.grad is not None


# -- errors that say what to do --------------------------------------------------------------------
class Summary(nn.Module):
    """Per-token logits ``(N, T, V)`` from a sequence summary ``(N, d)``: a point on the summary
    does not share the output's batch dimensions ``(N, T)``."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Linear(D_MODEL, D_MODEL)
        self.summary = nn.Linear(D_MODEL, D_MODEL)
        self.head = nn.Linear(D_MODEL, V)
        self.unused = nn.Linear(D_MODEL, D_MODEL)

    def forward(self, x):
        h = self.enc(x)
        return self.head(h + self.summary(h.mean(1))[:, None])


def test_errors_name_the_problem():
    with pytest.raises(TypeError, match=r"points=\[torchvision.models.resnet.BasicBlock\]"):
        dfatools.to_dfa(resnet(), K)
    with pytest.raises(ValueError, match="no submodule named 'layer5'"):
        dfatools.to_dfa(resnet(), K, points=["layer5"])
    with pytest.raises(ValueError, match="no submodule of type TransformerEncoderLayer"):
        dfatools.to_dfa(resnet(), K, points=[nn.TransformerEncoderLayer])
    x, _ = image_batch()
    both = dfatools.to_dfa(resnet(), K, points=["layer1.1", "layer1"])
    with pytest.raises(ValueError, match="'layer1.1'.*'layer1'.* sit on one tensor"):
        both(x)
    seq = torch.randn(4, T, D_MODEL)
    with pytest.raises(RuntimeError, match=r"1 \('unused'\) were not reached"):
        dfatools.to_dfa(Summary(), V, points=["enc", "unused"])(seq)
    with pytest.raises(ValueError, match=r"\(4, 16\).*\(4, 6, 11\)"):
        dfatools.to_dfa(Summary(), V, points=["summary"])(seq)
    with torch.no_grad():  # no gradient, no DFA: evaluation runs whatever the points
        assert dfatools.to_dfa(Summary(), V, points=["summary"])(seq).shape == (4, T, V)


# -- a point on a residual branch: the skip path still carries the true gradient -------------------
class Residual(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.branch = nn.Sequential(nn.Linear(width, width), nn.Tanh())

    def forward(self, h):
        return h + self.branch(h)


class ResidualNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(5, 6)
        self.block = Residual(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        return self.head(self.block(torch.tanh(self.stem(x))))


@pytest.mark.parametrize("point", ["block", "block.branch"])
def test_point_on_a_block_or_on_its_branch(point):
    torch.manual_seed(0)
    net = ResidualNet()
    model = dfatools.to_dfa(net, 3, seed=1, points=[point])
    x, y = torch.randn(7, 5), torch.randint(0, 3, (7,))
    got = converted_grads(model, x, y)
    net = copy_weights(model, ResidualNet())
    h = torch.tanh(net.stem(x))
    b = net.block.branch(h)
    if point == "block":  # the whole block: its output is detached, nothing reaches the stem
        hidden = h + b  # ... but the DFA signal, through the block (skip included)
        out = net.head(hidden.detach())
    else:  # the branch only: the skip path h -> head still carries the true gradient
        hidden = b
        out = net.head(h + b.detach())
    loss = F.cross_entropy(out, y)
    e = (torch.softmax(out, -1) - F.one_hot(y, 3)).detach()
    s = e @ model.feedback.matrix  # one point: D = d = 6
    grads = torch.autograd.grad([loss, hidden], list(net.parameters()), [None, s])
    want = dict(zip((n for n, _ in net.named_parameters()), grads))
    assert_same_grads(got, want)


@pytest.mark.parametrize("method", ["fa", "frsf"])
def test_feedback_matrices_do_not_repeat_the_initial_weights(method):
    """torch.manual_seed(s), a bias-free net, then seed=s: B_l must not be W_l's own draw."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, bias=False),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, K, bias=False),
    )
    model = dfatools.to_method(net, method, K, seed=0)
    name = "feedback_weight" if method == "fa" else "feedback_magnitude"
    layers = [m for m in model.modules() if hasattr(m, name)]
    assert len(layers) == 3
    for m in layers:
        B, W = getattr(m, name).flatten(), m.weight.detach().flatten()
        W = W if method == "fa" else W.abs()
        centred = F.cosine_similarity(B - B.mean(), W - W.mean(), dim=0)
        assert abs(float(centred)) < 0.3, (m, float(centred))
