"""The layer methods (fa, sign, brsf, frsf) on attention projections and Hugging Face Conv1D
layers (dfatools.attention, dfatools.fa): the forward is the original module's function; with
every backward matrix set to the weight itself the gradients are BP's; with the drawn ones the
gradient below the attention is not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import dfatools
from dfatools.fa import LAYER_METHODS

CONVERT = {
    "fa": dfatools.to_fa,
    "sign": lambda m: dfatools.to_sign(m),
    "brsf": lambda m: dfatools.to_rsf(m, "brsf"),
    "frsf": lambda m: dfatools.to_rsf(m, "frsf"),
}


class Encoder(nn.Module):
    """Embedding, two encoder layers, a head: the attention sits between trained layers."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.layers = nn.Sequential(
            *(nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True) for _ in "ab")
        )
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.layers(self.embed(x)).mean(1))


def grads(model, x, y) -> dict[str, torch.Tensor]:
    model.zero_grad()
    x = x.clone().requires_grad_()
    nn.functional.cross_entropy(model(x), y).backward()
    out = {n: p.grad.clone() for n, p in model.named_parameters()}
    out["input"] = x.grad
    return out


def weights_as_feedback(model: nn.Module) -> None:
    """Every fa buffer set to the weight it stands for: B = W, so FA is BP."""
    for module in model.modules():
        for name, buffer in module.named_buffers(recurse=False):
            if name == "feedback_weight":
                buffer.copy_(module.weight)
            elif name.endswith("_feedback_weight"):
                buffer.copy_(getattr(module, name.removesuffix("_feedback_weight") + "_weight"))


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_converted_attention_computes_the_same_function(method):
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4)
    converted = CONVERT[method](mha)
    q, kv = torch.randn(5, 3, 16), torch.randn(7, 3, 16)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    padding = torch.rand(3, 5) > 0.7
    padding[:, 0] = False  # every query keeps a key
    cases = [
        ((q, q, q), {}),
        ((q, q, q), {"need_weights": False, "attn_mask": causal, "is_causal": True}),
        ((q, q, q), {"key_padding_mask": padding, "average_attn_weights": False}),
        ((q, kv, kv), {}),
        ((q[:, 0], q[:, 0], q[:, 0]), {}),  # unbatched
    ]
    for args, kwargs in cases:
        want, want_w = mha(*args, **kwargs)
        got, got_w = converted(*args, **kwargs)
        torch.testing.assert_close(got, want)
        assert (got_w is None) == (want_w is None)
        if want_w is not None:
            torch.testing.assert_close(got_w, want_w)


def test_converted_attention_matches_torch_on_dropout_and_the_causal_hint():
    """In training, with dropout, the returned weights are the dropped ones (as torch's) and the
    outputs equal under the same random numbers; the causal hint without a mask is refused as
    torch refuses it."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, dropout=0.5).train()
    converted = dfatools.to_fa(mha)
    q = torch.randn(5, 3, 16)
    torch.manual_seed(1)
    want, want_w = mha(q, q, q, average_attn_weights=False)
    torch.manual_seed(1)
    got, got_w = converted(q, q, q, average_attn_weights=False)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_w, want_w)
    assert (got_w == 0).any()  # dropped
    with pytest.raises(RuntimeError, match="attn_mask"):
        mha(q, q, q, is_causal=True)
    with pytest.raises(RuntimeError, match="attn_mask"):
        converted(q, q, q, is_causal=True)


@pytest.mark.parametrize("batch_first", [False, True])
def test_self_attention_projects_once_in_either_layout(batch_first, monkeypatch):
    """Self-attention takes the packed input projection (one product, as torch's) whether the
    batch comes first or not; cross-attention takes one per input."""
    from dfatools import attention

    calls = []
    project = attention._project
    monkeypatch.setattr(attention, "_project", lambda *a, **k: calls.append(1) or project(*a, **k))
    converted = dfatools.to_fa(nn.MultiheadAttention(16, 4, batch_first=batch_first))
    x = torch.randn(5, 3, 16, requires_grad=True)
    y = torch.randn(5, 7, 16) if batch_first else torch.randn(7, 3, 16)  # other keys
    converted(x, x, x)
    assert len(calls) == 1
    converted(x, y, y)
    assert len(calls) == 4


def test_fa_with_the_weights_as_feedback_is_bp_and_with_drawn_ones_is_not():
    torch.manual_seed(0)
    net = Encoder()
    x, y = torch.randn(4, 5, 6), torch.randint(0, 4, (4,))
    fa = dfatools.to_fa(net, seed=1)
    bp = grads(net, x, y)
    drawn = grads(fa, x, y)
    # The head's gradients are exact; everything below the attention is not.
    torch.testing.assert_close(drawn["head.weight"], bp["head.weight"])
    assert not torch.allclose(drawn["input"], bp["input"], atol=1e-4)
    assert not torch.allclose(drawn["embed.weight"], bp["embed.weight"], atol=1e-4)
    buffers = dict(fa.named_buffers())
    assert "layers.0.self_attn.in_proj_feedback_weight" in buffers
    weights_as_feedback(fa)
    same = grads(fa, x, y)
    for name in bp:
        torch.testing.assert_close(same[name], bp[name], rtol=1e-4, atol=1e-6, msg=name)
    # The drawn buffers are not part of the original model's state.
    Encoder().load_state_dict(dfatools.original_state_dict(fa))


def test_measuring_alignment_uses_exact_attention_for_the_true_gradient():
    torch.manual_seed(0)
    net = Encoder()
    model = dfatools.to_method(net, "fa", 4, points=["layers.0", "layers.1"], seed=1)
    x, y = torch.randn(4, 5, 6), torch.randint(0, 4, (4,))
    first = dfatools.measure_alignment(model, x, y)
    assert all(-1 <= a.cos_mean < 0.999 for a in first)  # FA's signal is not the gradient
    with dfatools.exact_layers(model):
        assert grads(model, x, y)["input"].allclose(grads(net, x, y)["input"], atol=1e-6)


@pytest.mark.parametrize("method", LAYER_METHODS)
def test_the_gradient_below_attention_goes_through_its_own_matrices(method):
    """An attention module alone: its input gradient is BP's only where B = W."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = torch.randn(3, 5, 16, requires_grad=True)

    def input_grad(module):
        x.grad = None
        module(x, x, x)[0].square().sum().backward()
        return x.grad.clone()

    converted = CONVERT[method](mha)
    assert not torch.allclose(input_grad(converted), input_grad(mha), atol=1e-4)
    with dfatools.exact_layers(converted):
        torch.testing.assert_close(input_grad(converted), input_grad(mha))


def test_hugging_face_conv1d_layers_are_converted():
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=16, n_head=2, vocab_size=30, n_positions=8)
    config.bos_token_id = config.eos_token_id = 0
    net = transformers.GPT2LMHeadModel(config).eval()
    tokens = torch.randint(0, 30, (2, 6))

    def lm_grads(model):
        model.zero_grad()
        logits = model(tokens).logits
        nn.functional.cross_entropy(logits.flatten(0, 1), tokens.roll(-1, 1).flatten()).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    fa = dfatools.to_fa(net, seed=1)
    assert "transformer.h.0.attn.c_attn.feedback_weight" in dict(fa.named_buffers())
    bp, drawn = lm_grads(net), lm_grads(fa)
    name = "transformer.h.0.attn.c_attn.weight"
    assert not torch.allclose(drawn[name], bp[name], atol=1e-5)
    weights_as_feedback(fa)
    same = lm_grads(fa)
    for name in bp:
        torch.testing.assert_close(same[name], bp[name], rtol=1e-4, atol=1e-6, msg=name)
