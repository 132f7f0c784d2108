"""DFA on Transformers (DESIGN.md 14, issue 32): post-norm blocks and their points, the error
taken at an interior tensor (``error_at``) against its definition, ``stream_norm`` against a
hand computation, the adam2020 recipe's resume, and refused recipe knobs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from fresh_interpreter import run_as_typed
from torch import nn

import dfatools
from mltools.models import networks
from mltools.models.stream_norm import StreamNorm
from mltools.reports import flags
from mltools.runs import recipes, runlog
from mltools.runs.runlog import Run
from mltools.training.train import RunConfig, Trainer, check_slices, train_run

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
VERSE = "Shall I compare thee to a summer's day? Thou art more lovely and more temperate.\n"


# -- post-norm blocks ------------------------------------------------------------------------------
def test_a_post_norm_block_is_layer_norm_after_each_residual_sum():
    """LN2(u + mlp(u)) with u = LN1(x + attn(x)), written with torch.nn.functional."""
    torch.manual_seed(0)
    block = networks.Block(16, 2, norm="post").eval()
    x = torch.randn(3, 5, 16)
    mask = nn.Transformer.generate_square_subsequent_mask(5)
    attn = block.attn
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)

    def heads(t):  # (N, T, d) -> (N, heads, T, d / heads)
        return t.reshape(3, 5, 2, 8).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-1, -2) / math.sqrt(8) + mask
    a = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(3, 5, 16)
    a = F.linear(a, attn.out_proj.weight, attn.out_proj.bias)

    def ln(t, norm):
        return F.layer_norm(t, (16,), norm.weight, norm.bias, norm.eps)

    u = ln(x + a, block.norm1)
    m = F.linear(
        F.gelu(F.linear(u, block.mlp[0].weight, block.mlp[0].bias)), *block.mlp[2].parameters()
    )
    with torch.no_grad():
        torch.testing.assert_close(block(x, mask), ln(u + m, block.norm2), rtol=1e-5, atol=1e-5)


def test_post_norm_models_have_no_final_layer_norm_and_keep_their_shapes():
    gpt = networks.CharGPT(9, 8, 32, 2, norm="post")
    assert isinstance(gpt.norm, nn.Identity) and isinstance(
        networks.CharGPT(9, 8, 32, 2).norm, nn.LayerNorm
    )
    assert gpt(torch.randint(0, 9, (2, 8))).shape == (2, 8, 9)
    rows = networks.RowTransformer((1, 8, 8), 10, norm="post")
    assert isinstance(rows.norm, nn.Identity)
    assert all(not layer.norm_first for layer in rows.encoder.layers)
    assert all(layer.norm_first for layer in networks.RowTransformer((1, 8, 8), 10).encoder.layers)
    assert rows(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    with pytest.raises(ValueError, match="norm"):
        networks.CharGPT(9, 8, 32, 2, norm="sandwich")


def test_micro_points_of_post_norm_blocks_sit_after_each_layer_norm_and_the_mlp_activation():
    gpt = networks.CharGPT(9, 8, 32, 2, norm="post")
    names = networks.lm_points(gpt, "micro")
    assert names == [f"blocks.{i}.{p}" for i in range(2) for p in ("norm1", "mlp.1", "norm2")]
    model = dfatools.to_dfa(gpt, 9, points=names)
    shapes = []
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, a, o: shapes.append(o.shape))
        for n in names
    ]
    dfatools.cross_entropy(
        model(torch.randint(0, 9, (2, 8))), torch.randint(0, 9, (2, 8))
    ).backward()
    for h in hooks:
        h.remove()
    assert shapes == [(2, 8, 32), (2, 8, 128), (2, 8, 32)] * 2
    # Every parameter below the head learns, from the signal of the point above it.
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


# -- the error at an interior tensor ---------------------------------------------------------------
class Trunk(nn.Module):
    """The sub-model of a CharGPT that ends at its ``norm``: ``(N, T)`` in, ``(N, T, d)`` out."""

    def __init__(self, net: networks.CharGPT) -> None:
        super().__init__()
        self.embed, self.pos, self.blocks, self.norm = net.embed, net.pos, net.blocks, net.norm
        self.register_buffer("mask", net.mask, persistent=False)

    def forward(self, tokens):
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        for block in self.blocks:
            x = block(x, self.mask[: tokens.shape[1], : tokens.shape[1]])
        return self.norm(x)


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("points", ["macro", "micro"])
def test_error_at_gives_the_gradients_of_the_sub_model_converted_with_the_rest_on_top(norm, points):
    """DESIGN.md 14: to_dfa(net, d, error_at="norm") trains every parameter as to_dfa(trunk, d)
    with the head run on top of it by plain autograd, matrix for matrix."""
    torch.manual_seed(0)
    vocab, d = 11, 32
    net = networks.CharGPT(vocab, 6, d, 2, norm=norm)
    tokens, target = torch.randint(0, vocab, (3, 6)), torch.randint(0, vocab, (3, 6))
    names = networks.lm_points(net, points)
    model = dfatools.to_dfa(net, d, points=names, error_at="norm", seed=3)
    dfatools.cross_entropy(model(tokens), target).backward()
    got = {n: p.grad for n, p in model.named_parameters()}

    trunk = dfatools.to_dfa(Trunk(net), d, points=names, seed=3)  # a copy, named as in net
    dfatools.cross_entropy(net.head(trunk(tokens)), target).backward()
    want = {n: p.grad for n, p in trunk.named_parameters()}
    want.update({f"head.{n}": p.grad for n, p in net.head.named_parameters()})
    assert set(got) == set(want)
    for name, grad in want.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    torch.testing.assert_close(model.feedback.matrix, trunk.feedback.matrix)
    assert model.feedback.matrix.shape[0] == d  # K is the width of z, not the vocabulary


def test_error_at_the_models_last_module_is_the_error_at_its_output():
    """The node on the head's output is the node on the model's output: same gradients."""
    torch.manual_seed(0)
    net = networks.CharGPT(7, 6, 16, 2)
    tokens, target = torch.randint(0, 7, (2, 6)), torch.randint(0, 7, (2, 6))
    grads = []
    for site in (None, "head"):
        model = dfatools.to_dfa(net, 7, points=[networks.Block], error_at=site)
        dfatools.cross_entropy(model(tokens), target).backward()
        grads.append([p.grad for p in model.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_alignment_and_pai_take_the_true_gradient_at_the_error_site():
    """With BP's gradient fed to the points in place of the DFA signal, the node's matrix would
    have to reproduce it; here we check the measured cosine against one computed by hand from
    the gradient at each block and the signal projected from dL/dz."""
    torch.manual_seed(0)
    net = networks.CharGPT(7, 6, 16, 2, norm="post")
    tokens, target = torch.randint(0, 7, (4, 6)), torch.randint(0, 7, (4, 6))
    model = dfatools.to_dfa(net, 16, points=[networks.Block], error_at="norm", seed=1)
    found = dfatools.measure_alignment(model, tokens, target)
    assert all(p.grad is None for p in model.parameters())
    net.eval()
    hs, zs = [], []
    hooks = [b.register_forward_hook(lambda m, a, o: hs.append(o)) for b in net.blocks]
    hooks.append(net.norm.register_forward_hook(lambda m, a, o: zs.append(o)))
    loss = F.cross_entropy(net(tokens).reshape(-1, 7), target.reshape(-1))
    for h in hooks:
        h.remove()
    grad_z, *grad_h = torch.autograd.grad(loss, [zs[0], *hs])
    P = 4 * 6
    M = torch.randn((16, 16), generator=torch.Generator().manual_seed(1)) / math.sqrt(16 * 16)
    s = (grad_z.reshape(P, 16) * P) @ M
    for a, g in zip(found, grad_h):
        cos = F.cosine_similarity(g.reshape(P, 16), s, dim=1)
        assert a.cos_mean == pytest.approx(cos.mean().item(), abs=1e-5)
    dfatools.prealign(model, tokens, target)  # no Linear reads a block directly: left as is


class Tower(nn.Module):
    """A Linear layer reads the point ``act1`` directly (PAI can solve it); ``act2`` is the
    error site; the head sits on top: ``(N, 6)`` in, ``(N, 5)`` out."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.act1 = nn.Linear(6, 12), nn.Tanh()
        self.fc2, self.act2 = nn.Linear(12, 12), nn.Tanh()
        self.head = nn.Linear(12, 5)

    def trunk(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))

    def forward(self, x):
        return self.head(self.trunk(x))


class TowerTrunk(nn.Module):
    """Tower up to its error site, its layers under the same names."""

    def __init__(self, tower: Tower) -> None:
        super().__init__()
        self.fc1, self.act1, self.fc2, self.act2 = tower.fc1, tower.act1, tower.fc2, tower.act2

    def forward(self, x):
        return self.act2(self.fc2(self.act1(self.fc1(x))))


def test_pai_at_an_error_site_is_pai_of_the_sub_model_with_the_rest_on_top():
    torch.manual_seed(0)
    tower = Tower()
    x, y = torch.randn(8, 6), torch.randint(0, 5, (8,))
    model = dfatools.prealign(dfatools.to_dfa(tower, 12, points=["act1"], error_at="act2"), x, y)
    trunk = dfatools.to_dfa(TowerTrunk(tower), 12, points=["act1"])
    dfatools.prealign(trunk, x, y, loss_fn=lambda z, t: F.cross_entropy(tower.head(z), t))
    torch.testing.assert_close(model.fc2.weight, trunk.fc2.weight)
    assert not torch.allclose(model.fc2.weight, tower.fc2.weight)  # PAI did solve it


def test_error_at_refuses_what_it_cannot_be():
    net = networks.CharGPT(7, 6, 16, 2)
    x = torch.randint(0, 7, (2, 6))
    with pytest.raises(ValueError, match="no submodule"):
        dfatools.to_dfa(net, 16, points=[networks.Block], error_at="nrom")
    with pytest.raises(ValueError, match="inside the feedback point"):
        dfatools.to_dfa(net, 16, points=[networks.Block], error_at="blocks.1.mlp")
    chain = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="points="):
        dfatools.to_dfa(chain, 4, error_at="3")
    with pytest.raises(ValueError, match="forward of its own"):
        dfatools.to_dfa(chain, 4, points=["1"], error_at="3")
    with pytest.raises(ValueError, match="DRTP"):
        dfatools.to_method(net, "drtp", 16, points=[networks.Block], error_at="norm")
    with pytest.raises(RuntimeError, match="did not run"):
        dfatools.to_dfa(net, 16, points=[networks.Block], error_at="blocks")(x)  # a ModuleList
    late = dfatools.to_dfa(net, 16, points=["blocks.0", "norm"], error_at="blocks.1")
    with pytest.raises(RuntimeError, match="before the error site 'blocks.1'"):
        late(x)  # training: the node finds the point not yet run
    with pytest.raises(RuntimeError, match="ran after the error site"), torch.no_grad():
        late(x)  # evaluation too, where points are identities
    fine = dfatools.to_dfa(net, 16, points=[networks.Block], error_at="norm")
    fine(x)
    fine.blocks[0](fine.embed(x), fine.mask)  # a block called alone after a pass: no error

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.head = nn.Linear(3, 3), nn.Linear(3, 3), nn.Linear(3, 2)

        def forward(self, x):
            return self.head(self.b(self.b(self.a(x))))

    with pytest.raises(RuntimeError, match="ran twice"):
        dfatools.to_dfa(Twice(), 3, points=["a"], error_at="b")(torch.randn(2, 3))


@pytest.mark.parametrize("method", ["fa", "sign", "shallow", "bp"])
def test_every_method_takes_error_at(method):
    torch.manual_seed(0)
    net = networks.CharGPT(7, 6, 16, 2, norm="post")
    model = dfatools.to_method(net, method, 16, points=[networks.Block], error_at="norm")
    tokens, target = torch.randint(0, 7, (2, 6)), torch.randint(0, 7, (2, 6))
    with dfatools.backprop(model) if method == "bp" else torch.enable_grad():
        dfatools.cross_entropy(model(tokens), target).backward()
    assert model.head.weight.grad is not None and model.head.weight.grad.abs().sum() > 0
    learned = model.blocks[0].mlp[0].weight.grad
    assert (learned is None) == (method == "shallow")  # shallow: the blocks get nothing
    assert len(dfatools.measure_alignment(model, tokens, target)) == 2


# -- the residual stream on record -----------------------------------------------------------------
def test_stream_norm_is_the_mean_token_norm_after_each_block_by_hand():
    torch.manual_seed(0)
    net = networks.CharGPT(7, 8, 16, 3)
    model = dfatools.to_dfa(net, 7, points=[networks.Block]).eval()
    tokens = torch.randint(0, 7, (5, 8))
    with torch.no_grad(), StreamNorm(model) as stream:
        model(tokens[:2])
        model(tokens[2:])
        x = net.embed(tokens) + net.pos[:8]
        want = []
        for block in net.blocks:
            x = block(x, net.mask)
            want.append(x.norm(dim=-1).mean().item())
    assert stream.values() == pytest.approx(want, rel=1e-5)
    assert StreamNorm(dfatools.to_dfa(networks.fc((4,), 3), 3)).blocks == []


def test_unbounded_flags_a_stream_grown_tenfold_over_the_last_half(tmp_path):
    def run(norms):
        records = [{"epoch": e, "eval_top1": 50.0, "stream_norm": n} for e, n in enumerate(norms)]
        return Run(tmp_path / "dfa" / "seed0", {}, records), records[-1]

    grown = [[1.0, 2.0]] * 3 + [[1.0, 25.0]] * 2  # epoch 4 over epoch 2: x12.5 at block 2
    flat = [[1.0, 2.0]] * 3 + [[1.0, 19.0]] * 2  # x9.5
    assert flags.unbounded(*run(grown)) == (True, pytest.approx(12.5))
    assert flags.unbounded(*run(flat)) == (False, pytest.approx(9.5))
    assert flags.unbounded(*run([[1.0]])) == (None, None)  # no trained epoch
    records = [{"epoch": e, "eval_top1": 50.0} for e in range(4)]  # not a Transformer
    assert flags.unbounded(Run(tmp_path, {}, records), records[-1]) == (None, None)
    counted = flags.convergence_flags([run(grown), run(flat)])
    assert counted.unbounded_cell() == "1/2" and "x12.5" in counted.unbounded[0]


# -- the adam2020 recipe ---------------------------------------------------------------------------
def lm_config(path: Path, **changes) -> RunConfig:
    base = dict(
        experiment="dfa", dataset="text", text=str(path), arch="gpt", method="dfa", context=16,
        model={"width": 32, "depth": 2, "norm": "post", "error_at": "hidden"}, epochs=4,
        batch_size=16, lr=3e-3, recipe="adam2020",
    )  # fmt: skip
    return RunConfig(**{**base, **changes})


def test_adam2020_with_plateau_resumes_bit_identical_and_steps_on_the_training_loss(tmp_path):
    path = tmp_path / "verse.txt"
    path.write_text(VERSE * 30, encoding="utf-8")
    cfg = lm_config(path, recipe=recipes.get_recipe("adam2020", plateau=True))
    assert cfg.recipe.clip == 0.5 and cfg.recipe.optimizer == "adam"
    trainer = Trainer(cfg, tmp_path / "probe", CPU, runlog.RunLog(tmp_path / "probe"))
    assert trainer.plateau.factor == 0.2 and trainer.plateau.patience == 1
    train_run(cfg, tmp_path / "whole", CPU, quiet=True)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    trainer = Trainer(cfg, stopped, CPU, runlog.RunLog(stopped))
    for epoch in range(trainer.start(), 3):
        trainer.epoch(epoch)
    stepped = trainer.plateau.state_dict()
    losses = [json.loads(line)["train_loss"] for line in (stopped / runlog.METRICS).open()]
    assert stepped["last_epoch"] == 2  # stepped after epochs 1 and 2, not after epoch 0
    assert stepped["best"] == pytest.approx(min(losses[1:]))  # the training loss, not eval's
    del trainer
    assert train_run(cfg, stopped, CPU, quiet=True) == "done"

    def records(run_dir):
        out = [json.loads(line) for line in (run_dir / runlog.METRICS).read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "time_s"} for r in out]

    assert records(stopped) == records(tmp_path / "whole")
    last = records(stopped)[-1]
    assert len(last["stream_norm"]) == 2 and all(v > 0 for v in last["stream_norm"])


def test_plateau_lowers_the_rate_after_two_epochs_without_a_lower_training_loss():
    net = nn.Linear(2, 2)
    opt = recipes.make_optimizer(recipes.get_recipe("adam2020", plateau=True), net, 1e-3)
    plateau = recipes.make_plateau(recipes.get_recipe("adam2020", plateau=True), opt)
    for loss in (1.0, 0.9, 0.95, 0.95):  # best 0.9; two epochs not better: x0.2
        plateau.step(loss)
    assert opt.param_groups[0]["lr"] == pytest.approx(2e-4)
    assert recipes.make_plateau(recipes.RECIPES["adam2020"], opt) is None


@pytest.mark.parametrize(
    "knobs, reason",
    [
        (dict(momentum=1.5), "momentum must lie in \\[0, 1\\)"),
        (dict(momentum=1.0), "momentum"),
        (dict(beta2=1.0), "beta2"),
        (dict(beta1=-0.1), "beta1"),
        (dict(clip=0.0), "clip"),
        (dict(plateau=True, schedule="cosine", warmup=0.1), "plateau"),
    ],
)
def test_bad_knobs_are_refused(knobs, reason):
    with pytest.raises(ValueError, match=reason):
        recipes.get_recipe("adam2020", **knobs)


@pytest.mark.parametrize(
    "flags",
    [
        ["--momentum", "1.5"],
        ["--recipe", "adam2020", "--betas", "0.9", "1"],
        ["--recipe", "adamw", "--plateau"],
    ],
)
def test_bad_knobs_on_the_command_line_exit_2_before_training(tmp_path, flags):
    out = run_as_typed("best_practices.py", *flags, "--out", "r", cwd=tmp_path)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert not (tmp_path / "r").exists()


def test_a_data_parallel_batch_must_leave_every_rank_a_sample():
    check_slices(100, 32, 2)  # the last batch of 4: 2 each
    with pytest.raises(ValueError, match="batch of 1, fewer than the 2 processes"):
        check_slices(97, 32, 2)
    with pytest.raises(ValueError, match="fewer than the 8"):
        check_slices(64, 4, 8)


def test_norm_and_error_at_are_refused_outside_the_transformers(tmp_path):
    out = run_as_typed(
        "best_practices.py",
        "--experiments",
        "fc-tanh",
        "--norm",
        "post",
        "--out",
        "r",
        cwd=tmp_path,
    )
    assert out.returncode == 2 and "transformer" in out.stderr
    with pytest.raises(ValueError, match="norm: not an option of arch 'fc'"):
        RunConfig(arch="fc", model={"norm": "post"})
    (tmp_path / "t.txt").write_text(VERSE * 20, encoding="utf-8")
    drtp = run_as_typed("language_model.py", "--text", "t.txt", "--methods", "drtp", "--error-at",
                  "hidden", "--out", "d", cwd=tmp_path)  # fmt: skip
    assert drtp.returncode == 2 and "drtp" in drtp.stderr and not (tmp_path / "d").exists()


def test_the_script_trains_post_norm_dfa_at_the_hidden_state_and_records_the_stream(tmp_path):
    (tmp_path / "some.txt").write_text(VERSE * 60, encoding="utf-8")
    out = run_as_typed(
        "language_model.py", "--text", "some.txt", "--norm", "post", "--error-at", "hidden",
        "--methods", "bp", "dfa", "shallow", "--seeds", "1", "--epochs", "2", "--context", "32",
        "--width", "32", "--depth", "2", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "post-norm blocks" in out.stdout and "error at the hidden" in out.stdout
    root = tmp_path / "results" / "language_model"
    for method in ("bp", "dfa", "shallow"):
        run_dir = root / method / "seed0"
        config = json.loads((run_dir / runlog.CONFIG).read_text())
        assert (config["model"]["norm"], config["model"]["error_at"]) == ("post", "hidden")
        records = [json.loads(line) for line in (run_dir / runlog.METRICS).read_text().splitlines()]
        assert len(records) == 3 and all(len(r["stream_norm"]) == 2 for r in records)
        rebuilt, warnings = runlog.parse_log((run_dir / runlog.LOG).read_text())
        assert not warnings  # log.txt alone rebuilds the stream too
        assert [r["stream_norm"] for r in rebuilt] == [r["stream_norm"] for r in records]
    state = torch.load(root / "dfa" / "seed0" / runlog.MODEL, weights_only=True)
    assert state["feedback.matrix"].shape == (32, 32)  # the hidden width, not the vocabulary
    report = (root / "report.md").read_text(encoding="utf-8")
    assert "unbounded" in report and "stream norm" in report.lower()
