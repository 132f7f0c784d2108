"""DFA on models as researchers load them (DESIGN.md 11): Hugging Face and timm models built from
configs (nothing downloaded), torchvision's ViT, an LSTM, a segmentation net, dict and tuple
outputs.

Every gradient is checked against the definition computed here, independently of dfatools: the
original model runs with each point's output handed on detached (``h_l`` kept), the feedback
matrix is drawn from its seed as DESIGN.md 2 says, each signal ``s_l`` is written out from
DESIGN.md 11's formulas, and ``torch.autograd.backward`` sends the loss to the output layer and
``s_l`` into each ``h_l``. ``bp`` is checked against the original model's plain gradients.
"""

from __future__ import annotations

import math
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import dfatools

SEED = 3
Scores = namedtuple("Scores", ["values", "features"])


# -- the definition, written out ------------------------------------------------------------------
def drawn_matrix(K: int, D: int) -> torch.Tensor:
    """B ~ N(0, 1) of shape (K, D) from a generator seeded by the feedback seed, / sqrt(D K)."""
    return torch.randn((K, D), generator=torch.Generator().manual_seed(SEED)) / math.sqrt(D * K)


def layout(h: torch.Tensor, ydim: int, class_dim: int, positions: str) -> tuple[int, int]:
    """(f_l, extra positions) of a point h under an output of ydim dimensions."""
    if class_dim == 1:
        return h.shape[1], 1
    rest = h.shape[ydim - 1 :]
    if positions == "shared" and len(rest) == 2:
        return rest[1], rest[0]
    if positions == "shared" and len(rest) > 2:
        return rest[0], math.prod(rest[1:])
    return math.prod(rest), 1


def signal(e_rows, M, D, h, ydim, class_dim, positions) -> torch.Tensor:
    """s_l by DESIGN.md 11: e @ M[:, :f] * sqrt(D / f) per position, laid out like h."""
    f, extra = layout(h, ydim, class_dim, positions)
    s = e_rows @ M[:, :f] * math.sqrt(D / f)  # (P, f)
    if class_dim == 1:  # position p's channels: (N, *pos, C) -> (N, C, *pos)
        return s.reshape(h.shape[0], *h.shape[2:], f).movedim(-1, 1)
    lead = h.shape[: ydim - 1]
    if extra == 1:
        return s.reshape(h.shape)
    s = s / math.sqrt(extra)
    if h.dim() - len(lead) == 2:  # (T, d): the same d features at every T
        return s.reshape(*lead, 1, f).expand(h.shape)
    return s.reshape(*lead, f, *[1] * (h.dim() - len(lead) - 1)).expand(h.shape)


def definition_grads(net, points, x, target, K, pick, class_dim=-1, positions="shared"):
    """Each parameter's gradient by the definition, on the unconverted ``net`` (``positions``:
    ``to_dfa``'s default with ``points=``)."""
    hs: list[torch.Tensor] = []

    def hand_on_detached(module, args, out):
        first = out[0] if isinstance(out, tuple) else out
        hs.append(first)
        cut = first.detach().requires_grad_()
        return (cut, *out[1:]) if isinstance(out, tuple) else cut

    modules = dict(net.named_modules())
    handles = [modules[name].register_forward_hook(hand_on_detached) for name in points]
    y = pick(net(x))
    for handle in handles:
        handle.remove()
    loss = loss_of(y, target, class_dim)
    (grad_y,) = torch.autograd.grad(loss, y, retain_graph=True)
    rows = grad_y.movedim(1, -1) if class_dim == 1 else grad_y
    rows = rows.reshape(-1, K)
    e = rows * rows.shape[0]  # e = P dL/dy
    D = max(layout(h, y.dim(), class_dim, positions)[0] for h in hs)
    M = drawn_matrix(K, D)
    signals = [signal(e, M, D, h, y.dim(), class_dim, positions) for h in hs]
    net.zero_grad()
    torch.autograd.backward([loss, *hs], [torch.ones(()), *signals])
    return {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}


def loss_of(y, target, class_dim):
    if class_dim == 1:
        return F.cross_entropy(y, target)
    return F.cross_entropy(y.reshape(-1, y.shape[-1]), target.reshape(-1))


def model_grads(model, x, target, pick, class_dim=-1) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss_of(pick(model(x)), target, class_dim).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def check(net, points, x, target, K, output=None, pick=lambda o: o, **layout_options):
    """DFA's gradients are the definition's, and bp's are plain BP's, for every parameter."""
    net.eval()  # no dropout: the two forward passes must see the same network
    options = dict(points=points, output=output, seed=SEED, **layout_options)
    model = dfatools.to_dfa(net, K, **options)
    got = model_grads(model, x, target, pick, layout_options.get("class_dim", -1))
    want = definition_grads(net, points, x, target, K, pick, **layout_options)
    assert set(got) == set(want) and len(got) > 2
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)
    bp = dfatools.to_method(net, "bp", K, **options)
    plain = model_grads(net, x, target, pick, layout_options.get("class_dim", -1))
    got = model_grads(bp, x, target, pick, layout_options.get("class_dim", -1))
    for name in plain:
        torch.testing.assert_close(got[name], plain[name], rtol=1e-4, atol=1e-6, msg=name)
    return model


# -- the models -----------------------------------------------------------------------------------
def test_hugging_face_gpt2_lm_per_token_with_points_at_its_blocks():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=40, n_positions=16)
    config.bos_token_id = config.eos_token_id = 0
    net = GPT2LMHeadModel(config)
    tokens = torch.randint(0, 40, (3, 8))
    points = ["transformer.h.0", "transformer.h.1"]
    model = check(net, points, tokens, tokens.roll(-1, 1), 40, "logits", lambda o: o.logits)
    out = model(tokens)
    assert type(out).__name__ == "CausalLMOutputWithCrossAttentions" and out.logits is out["logits"]
    # The rest of the family and the tools work on it too.
    fa = dfatools.to_method(net, "fa", 40, points=points, output="logits")
    fa(tokens).logits.sum().backward()
    records = dfatools.measure_alignment(model, tokens, tokens.roll(-1, 1))
    assert len(records) == 2 and all(-1 <= r.cos_mean <= 1 for r in records)
    fresh = GPT2LMHeadModel(config)
    fresh.load_state_dict(dfatools.original_state_dict(model))


@pytest.mark.parametrize("positions", ["flat", "shared"])
def test_hugging_face_bert_classifier_pools_its_tokens(positions):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_labels=3,
        max_position_embeddings=16,
    )
    net = BertForSequenceClassification(config)
    tokens, labels = torch.randint(0, 40, (4, 8)), torch.randint(0, 3, (4,))
    points = ["bert.encoder.layer.0", "bert.encoder.layer.1"]
    check(net, points, tokens, labels, 3, "logits", lambda o: o.logits, positions=positions)


def test_timm_vit_with_shared_positions():
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(
        img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=5
    )
    x, labels = torch.randn(3, 3, 16, 16), torch.randint(0, 5, (3,))
    check(net, ["blocks.0", "blocks.1"], x, labels, 5, positions="shared")


def test_torchvision_vit():
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    net = VisionTransformer(
        16, 4, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=5
    )
    x, labels = torch.randn(3, 3, 16, 16), torch.randint(0, 5, (3,))
    points = ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_1"]
    check(net, points, x, labels, 5, positions="shared")


class TwoLSTMs(nn.Module):
    """Per-token classifier over two stacked LSTMs (they return (output, (h, c)))."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(20, 12)
        self.lstm1 = nn.LSTM(12, 16, batch_first=True)
        self.lstm2 = nn.LSTM(16, 16, batch_first=True)
        self.head = nn.Linear(16, 7)

    def forward(self, tokens):
        out, _ = self.lstm1(self.embed(tokens))
        out, _ = self.lstm2(out)
        return self.head(out)


def test_a_point_on_an_lstm_acts_on_its_output_sequence():
    torch.manual_seed(0)
    tokens = torch.randint(0, 20, (3, 6))
    check(TwoLSTMs(), ["lstm1", "lstm2"], tokens, torch.randint(0, 7, (3, 6)), 7)


class SegNet(nn.Module):
    """A fully convolutional segmentation net: (N, 3, H, W) -> (N, K, H, W)."""

    def __init__(self, k: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh())
        self.conv2 = nn.Sequential(nn.Conv2d(8, 6, 3, padding=1), nn.Tanh())
        self.head = nn.Conv2d(6, k, 1)

    def forward(self, x):
        return self.head(self.conv2(self.conv1(x)))


def test_segmentation_output_channels_first():
    torch.manual_seed(0)
    x, labels = torch.randn(2, 3, 5, 6), torch.randint(0, 4, (2, 5, 6))
    model = check(SegNet(), ["conv1", "conv2"], x, labels, 4, class_dim=1)
    records = dfatools.measure_alignment(model, x, labels)
    assert len(records) == 2 and all(math.isfinite(r.cos_mean) for r in records)


class Structured(nn.Module):
    """A classifier returning its logits inside a dict, a tuple or a named tuple."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.body = nn.Sequential(nn.Linear(6, 10), nn.Tanh())
        self.head = nn.Linear(10, 3)

    def forward(self, x):
        h = self.body(x)
        y = self.head(h)
        if self.kind == "dict":
            return {"features": h, "logits": y}
        if self.kind == "named":
            return Scores(y, h)
        return (h, y)


@pytest.mark.parametrize(
    "kind, output, pick",
    [
        ("dict", "logits", lambda o: o["logits"]),
        ("tuple", 1, lambda o: o[1]),
        ("tuple", lambda o: o[1], lambda o: o[1]),
        ("named", "values", lambda o: o.values),
    ],
)
def test_structured_outputs_keep_their_structure(kind, output, pick):
    torch.manual_seed(0)
    x, labels = torch.randn(4, 6), torch.randint(0, 3, (4,))
    model = check(Structured(kind), ["body"], x, labels, 3, output, pick)
    out = model(x)
    assert type(out) is type(Structured(kind)(x))


def test_a_structured_output_without_output_says_what_to_do():
    model = dfatools.to_dfa(Structured("dict"), 3, points=["body"])
    with pytest.raises(ValueError, match="output="):
        model(torch.randn(2, 6))
    model = dfatools.to_dfa(Structured("dict"), 3, points=["body"], output="scores")
    with pytest.raises(ValueError, match="keys: features, logits"):
        model(torch.randn(2, 6))
