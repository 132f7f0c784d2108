"""Per-token DFA on text (DESIGN.md 13): the text reader, splits and windows, the character GPT,
per-token DFA gradients against the definition, bits per character against a hand
computation, and language_model.py on a text it has never seen."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fresh_interpreter import run_as_typed

import dfatools
from mltools import stream
from mltools.data import text
from mltools.data.datasets import DataError
from mltools.models import networks, stream_norm
from mltools.runs import runlog
from mltools.training.train import RunConfig, build_net, train_run

ROOT = Path(__file__).resolve().parents[1]
VERSE = "Shall I compare thee to a summer’s day?\r\nThou art more lovely — and more temperate.\n"


def test_utf8_text_is_read_by_character_and_bad_bytes_are_refused(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(("é😀\r\n" + VERSE).encode("utf-8"))
    content = text.read_utf8(path)
    assert content[:4] == "é😀\r\n"  # code points, line ends kept as they are
    path.write_bytes(b"abc\xff\xfedef")
    with pytest.raises(DataError, match="offset 3"):
        text.read_utf8(path)
    with pytest.raises(DataError, match="cannot read"):
        text.read_utf8(tmp_path / "missing.txt")


def test_documents_are_never_cut_across_splits():
    documents = [f"<doc {i}>" + "x" * i for i in range(40)]
    train, val, test = text.split_documents(documents)
    for doc in documents:  # each document whole in exactly one split
        assert [doc in part for part in (train, val, test)].count(True) == 1
    assert val and test and len(train) > len(val) + len(test)
    assert text.split_documents(documents) == (train, val, test)  # seeded
    one = "a" * 1000  # a single document: 90/5/5 of its characters, in order
    assert [len(p) for p in text.split_documents([one])] == [900, 50, 50]


def test_vocabulary_from_train_and_windows_by_hand():
    corpus = text.build_corpus(["abcab", "ba", "zz"] * 1)  # 3 documents: one per split
    assert corpus.vocab[0] == text.UNKNOWN and corpus.vocab[1:] == "".join(sorted(corpus.vocab[1:]))
    unseen = next(c for c in "abz" if c not in corpus.vocab)
    assert corpus.encode(unseen)[0] == 0
    x, y = text.windows(np.arange(11), 3)
    assert x.tolist() == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert y.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]
    with pytest.raises(DataError, match="no window"):
        text.windows(np.arange(3), 3)


def test_char_gpt_shapes_and_causality():
    torch.manual_seed(0)
    net = networks.CharGPT(vocab=11, context=8, d_model=32, layers=2).eval()
    tokens = torch.randint(0, 11, (3, 8))
    out = net(tokens)
    assert out.shape == (3, 8, 11)
    changed = tokens.clone()
    changed[:, 5:] = (changed[:, 5:] + 1) % 11
    torch.testing.assert_close(net(changed)[:, :5], out[:, :5])  # no look at later characters
    assert net(tokens[:, :4]).shape == (3, 4, 11)


@pytest.mark.parametrize("points", ["macro", "micro"])
def test_per_token_dfa_gradients_match_the_definition(points):
    """One projection per token: s_l[n, t] = e[n, t] @ M[:, :d] * sqrt(D / d), e = P dL/dy,
    M drawn from the seed; each block's parameters get s_l back-propagated through it alone."""
    torch.manual_seed(0)
    vocab, d = 13, 32
    net = networks.CharGPT(vocab, context=6, d_model=d, layers=2).eval()
    names = networks.lm_points(net, points)
    tokens, target = torch.randint(0, vocab, (4, 6)), torch.randint(0, vocab, (4, 6))
    model = dfatools.to_dfa(net, vocab, points=names, seed=5)
    model.zero_grad()
    dfatools.cross_entropy(model(tokens), target).backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    # By hand, on the unconverted net: each point's output handed on detached.
    hs = []

    def cut(module, args, out):
        first = out[0] if isinstance(out, tuple) else out
        hs.append(first)
        detached = first.detach().requires_grad_()
        return (detached, *out[1:]) if isinstance(out, tuple) else detached

    modules = dict(net.named_modules())
    blocks = [n for n, m in modules.items() if isinstance(m, networks.Block)]
    chosen = blocks if points == "macro" else names
    handles = [modules[n].register_forward_hook(cut) for n in chosen]
    y = net(tokens)
    for h in handles:
        h.remove()
    loss = F.cross_entropy(y.reshape(-1, vocab), target.reshape(-1))
    (grad_y,) = torch.autograd.grad(loss, y, retain_graph=True)
    e = grad_y.reshape(-1, vocab) * (4 * 6)
    M = torch.randn((vocab, d), generator=torch.Generator().manual_seed(5)) / math.sqrt(d * vocab)
    net.zero_grad()
    torch.autograd.backward([loss, *hs], [torch.ones(()), *((e @ M).reshape(h.shape) for h in hs)])
    want = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert set(got) == set(want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bits_per_character_match_a_hand_computation(tmp_path):
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 40, encoding="utf-8")
    cfg = RunConfig(
        experiment="bp", dataset="text", text=str(path), arch="gpt", method="bp", context=16,
        model={"width": 32, "depth": 1}, epochs=1, batch_size=16, lr=1e-3, recipe="adamw",
    )  # fmt: skip
    assert train_run(cfg, tmp_path / "run", torch.device("cpu"), quiet=True) == "done"
    record = [json.loads(line) for line in (tmp_path / "run" / runlog.METRICS).open()][-1]
    data = text.load_text("text", str(path), 16, "test", None, None, "cpu")
    net, placement = build_net(cfg, data.input_shape, data.num_classes)
    state = torch.load(tmp_path / "run" / runlog.MODEL, weights_only=True)
    model = dfatools.to_method(net, "bp", data.num_classes, points=networks.lm_points(net, "macro"))
    model.load_state_dict(state)
    with torch.no_grad():
        logits = model.eval()(data.x_eval).double().numpy()
    target = data.y_eval.numpy()
    top = logits.max(-1, keepdims=True)
    log_z = np.log(np.exp(logits - top).sum(-1)) + top[..., 0]
    nats = (log_z - np.take_along_axis(logits, target[..., None], -1)[..., 0]).mean()
    assert record["eval_bpc"] == pytest.approx(nats / math.log(2), rel=1e-5)
    assert record["eval_bpc"] == pytest.approx(record["eval_loss"] / math.log(2))
    samples = (tmp_path / "run" / runlog.SAMPLES).read_text(encoding="utf-8")
    prompt = data.vocab and "".join(data.vocab[int(i)] for i in data.x_eval[0, :16])
    assert samples.startswith(prompt) and len(samples) == 16 + 300  # the window's 16 + 300


def test_the_script_trains_on_a_text_it_has_never_seen(tmp_path):
    (tmp_path / "some.txt").write_text(VERSE * 60, encoding="utf-8")
    out = run_as_typed("language_model.py",
        "--text", "some.txt", "--methods", "bp", "dfa", "shallow", "--seeds", "1", "--epochs", "2",
        "--context", "32", "--width", "32", "--depth", "2", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    root = tmp_path / "results" / "language_model"
    for method in ("bp", "dfa", "shallow"):
        records = (root / method / "seed0" / runlog.METRICS).read_text().splitlines()
        assert len(records) == 3 and "eval_bpc" in json.loads(records[-1])
    report = (root / "report.md").read_text(encoding="utf-8")
    assert "| dfa " in report and "## Samples" in report and "**shallow**" in report
    table = stream.table(tmp_path / "results", 5).splitlines()
    assert len(table) == 2 + 3 and [row.split(" | ")[0] for row in table[2:]] == [
        "| bp",
        "| dfa",
        "| shallow",
    ]
    assert all(len(row.split("|")) == 2 + 2 + 1 + 2 for row in table)  # x_0 and 2 blocks
    bad = run_as_typed("language_model.py", "--text", "missing.txt", cwd=tmp_path)
    assert bad.returncode == 2 and "cannot read text file" in bad.stderr
    assert bad.stderr.strip().count("\n") == 0


def test_the_study_preset_gives_each_method_its_chosen_rate_and_the_preset_model():
    """shakespeare-study: each method's lr and epochs from its choices, the preset's model
    size, every window of the evaluated plays; --lr still overrides."""
    from mltools import cli, errors
    from mltools.studies.experiments import LM_PRESETS

    parser = cli.ArgumentParser()
    cli.add_sweep_arguments(parser, LM_PRESETS)
    args = parser.parse_args(["--preset", "shakespeare-study"])
    settings = cli.resolve_preset(args, LM_PRESETS, "language_model.py")
    assert settings["eval_samples"] is None and settings["train_samples"] == 8000
    assert LM_PRESETS["shakespeare-study"].model == {"context": 64, "width": 64, "depth": 4}
    choices = {"bp": (0.003, 10), "dfa": (0.0003, 8)}
    dfa = cli.experiment_settings(settings, choices, "dfa", args, arch="gpt")
    assert (dfa["lr"], dfa["epochs"], dfa["recipe"].optimizer) == (0.0003, 8, "adamw")
    with pytest.raises(errors.UsageError, match="no chosen lr"):
        cli.experiment_settings(settings, choices, "shallow", args, arch="gpt")
    args = parser.parse_args(["--preset", "shakespeare-study", "--lr", "0.01"])
    assert cli.experiment_settings(settings, choices, "bp", args, arch="gpt")["lr"] == 0.01
    grid = cli.resolve_preset(parser.parse_args(["--preset", "shakespeare"]), LM_PRESETS, "x")
    assert grid["eval_samples"] == 1000  # the rates are chosen on the val plays' first windows


def test_stream_states_are_the_residual_stream_the_head_reads():
    """``x_0`` is embedding plus positions, the last state is what the final LayerNorm and
    head turn into the logits, and with every block's output layers zeroed except one bias
    ``b`` (block 1's MLP) the stream is ``x_0`` then ``x_0 + b`` (T below the context)."""
    torch.manual_seed(0)
    net = networks.CharGPT(vocab=7, context=8, d_model=16, layers=3)
    tokens = torch.randint(0, 7, (4, 5))
    states = stream_norm.stream_states(net, tokens)
    x0 = net.embed.weight[tokens] + net.pos[:5]
    assert len(states) == 4 and torch.allclose(states[0], x0)
    with torch.no_grad():
        assert torch.allclose(net.head(net.norm(states[-1])), net(tokens), atol=1e-6)
        for block in net.blocks:
            for layer in (block.attn.out_proj, block.mlp[2]):
                layer.weight.zero_()
                layer.bias.zero_()
        bias = torch.randn(16)
        net.blocks[0].mlp[2].bias.copy_(bias)
    norms = stream_norm.stream_norms(net, tokens)
    assert norms[0] == pytest.approx(x0.norm(dim=-1).mean().item(), rel=1e-5)
    assert norms[1:] == pytest.approx([(x0 + bias).norm(dim=-1).mean().item()] * 3, rel=1e-5)


@pytest.mark.parametrize("method", ["dfa", "fa", "brsf"])
def test_the_stream_reads_the_network_of_any_methods_run(tmp_path, method):
    """A run's ``model.pt`` holds what its method added (a DFA matrix, feedback buffers): the
    rebuilt network computes what the trained model computes. A broken file: one line."""
    torch.manual_seed(0)
    net = networks.CharGPT(vocab=7, context=8, d_model=16, layers=2)
    model = dfatools.to_method(net, method, 7, points=[networks.Block]).eval()
    # config.json as written before the options were nested (the key map reads it)
    runlog.write_config(tmp_path, {"arch": "gpt", "context": 8, "lm_width": 16, "lm_depth": 2})
    torch.save(model.state_dict(), tmp_path / runlog.MODEL)
    tokens = torch.randint(0, 7, (3, 8))
    with torch.no_grad():
        assert torch.allclose(stream.trained_net(tmp_path, 7)(tokens), model(tokens), atol=1e-6)
    (tmp_path / runlog.MODEL).write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="model.pt") as err:
        stream.trained_net(tmp_path, 7)
    assert "\n" not in str(err.value)
