"""Training recipes (mltools.runs.recipes, DESIGN.md 12): each recipe's updates against the update
rules and schedules written out by hand, resume under a schedule, and the recipe in run
folders and on the command line."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fresh_interpreter import run_as_typed
from torch import nn

from mltools.runs import recipes, runlog
from mltools.sweeps.sweep import RunSpec, plan, run_sweep
from mltools.training.train import RunConfig, Trainer, train_run

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
STEPS = 12


# -- the schedules and update rules, written out from their papers' formulas ----------------------
def onecycle_lr(step: int, total: int, peak: float, warmup: float) -> float:
    """Smith and Topin's one-cycle, cosine phases: lr/25 up to lr over the warm-up steps, then
    down to lr/25/1e4 at the last step."""
    start, end = peak / 25, peak / 25 / 1e4
    up = warmup * total - 1
    if step <= up:
        return end_cos(start, peak, step / up)
    return end_cos(peak, end, (step - up) / (total - 1 - up))


def end_cos(a: float, b: float, frac: float) -> float:
    """From ``a`` (frac 0) to ``b`` (frac 1) along half a cosine."""
    return b + (a - b) * (1 + math.cos(math.pi * frac)) / 2


def cosine_lr(step: int, total: int, peak: float, warmup: float) -> float:
    """Linear warm-up from peak / w to peak over w steps, then cosine from peak to 0."""
    w = math.ceil(warmup * total)
    if step < w:
        return peak * (1 / w + (1 - 1 / w) * step / w)
    return end_cos(peak, 0.0, (step - w) / (total - w))


def hand_lr(recipe: recipes.Recipe, step: int, peak: float) -> float:
    if recipe.schedule == "onecycle":
        return onecycle_lr(step, STEPS, peak, recipe.warmup)
    if recipe.schedule == "cosine":
        return cosine_lr(step, STEPS, peak, recipe.warmup)
    return peak


class HandOptimizer:
    """SGD (with Nesterov momentum), Adam and AdamW as their update rules read, weight decay on
    tensors of two dimensions or more, the global gradient norm clipped first."""

    def __init__(self, recipe: recipes.Recipe, params: list[torch.Tensor]) -> None:
        self.r, self.params, self.t = recipe, params, 0
        self.buf = [torch.zeros_like(p) for p in params]
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]

    def step(self, grads: list[torch.Tensor], lr: float) -> None:
        r = self.r
        if r.clip is not None:
            norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).float()
            scale = min(1.0, r.clip / (norm.item() + 1e-6))
            grads = [g * scale for g in grads]
        self.t += 1
        for i, (p, g) in enumerate(zip(self.params, grads)):
            wd = r.weight_decay if p.dim() >= 2 else 0.0
            if r.optimizer == "sgd":
                g = g + wd * p
                if r.momentum:
                    self.buf[i] = g.clone() if self.t == 1 else r.momentum * self.buf[i] + g
                    g = g + r.momentum * self.buf[i] if r.nesterov else self.buf[i]
                p -= lr * g
                continue
            if r.optimizer == "adamw":
                p *= 1 - lr * wd
            self.m[i] = r.beta1 * self.m[i] + (1 - r.beta1) * g
            self.v[i] = r.beta2 * self.v[i] + (1 - r.beta2) * g * g
            m_hat = self.m[i] / (1 - r.beta1**self.t)
            v_hat = self.v[i] / (1 - r.beta2**self.t)
            p -= lr * m_hat / (v_hat.sqrt() + 1e-8)


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 3))


@pytest.mark.parametrize("name", list(recipes.RECIPES))
def test_each_recipe_updates_as_its_rules_written_by_hand(name):
    """Twelve steps of the recipe's optimizer and schedule (mltools.runs.recipes) give the
    parameters that the update rules and schedule formulas, computed here in float64, give."""
    # Clipping at a norm the gradients exceed, so that it acts.
    recipe = recipes.get_recipe(name, clip=0.05) if name == "adamw" else recipes.RECIPES[name]
    peak = 0.05
    net = tiny_net()
    hand_params = [p.detach().double().clone() for p in net.parameters()]
    hand = HandOptimizer(recipe, hand_params)
    opt = recipes.make_optimizer(recipe, net, peak)
    sched = recipes.make_scheduler(recipe, opt, STEPS)
    gen = torch.Generator().manual_seed(1)
    for step in range(STEPS):
        x, y = torch.randn(8, 6, generator=gen), torch.randint(0, 3, (8,), generator=gen)
        # The same gradient for both: the network's, at the network's (float32) parameters.
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        last_lr = opt.param_groups[0]["lr"]
        assert last_lr == pytest.approx(hand_lr(recipe, step, peak), rel=1e-9)
        grads = [p.grad.double().clone() for p in net.parameters()]
        if recipe.clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), recipe.clip)
        opt.step()
        sched.step()
        hand.step(grads, hand_lr(recipe, step, peak))
        for p, q in zip(net.parameters(), hand.params):
            torch.testing.assert_close(p.detach().double(), q, rtol=1e-4, atol=1e-6)
            q.copy_(p.detach().double())  # follow the float32 trajectory
    if recipe.schedule != "constant":  # a decaying schedule ends near 0
        assert last_lr < 0.05 * peak


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 10])
@pytest.mark.parametrize("warmup", [0.1, 0.25, 0.5, 0.9])
def test_schedules_of_few_steps_stay_finite(schedule, total, warmup):
    """Warm-ups of one step or of every step (0.25 of 4, 0.5 of 2, 0.9 of 5 rounded up) once
    left an empty phase that divided by zero: every rate is a number in [0, lr]."""
    net = tiny_net()
    recipe = recipes.get_recipe("sgd", schedule=schedule, warmup=warmup)
    opt = recipes.make_optimizer(recipe, net, 0.1)
    sched = recipes.make_scheduler(recipe, opt, total)
    for _ in range(total):
        lr = opt.param_groups[0]["lr"]
        assert math.isfinite(lr) and 0 <= lr <= 0.1 + 1e-12
        opt.step()
        sched.step()


def test_weight_decay_spares_biases_and_norm_parameters():
    net = tiny_net()
    opt = recipes.make_optimizer(recipes.RECIPES["sgd"], net, 0.1)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] for p in g["params"]}
    assert decayed == {id(net[0].weight), id(net[3].weight)}
    assert len(recipes.make_optimizer(recipes.RECIPES["paper"], net, 0.1).param_groups) == 1


def test_bad_recipes_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="warm-up"):
        recipes.get_recipe("sgd", warmup=0.0)
    with pytest.raises(ValueError, match="Nesterov"):
        recipes.get_recipe("adamw", nesterov=True)
    with pytest.raises(ValueError, match="unknown recipe"):
        recipes.get_recipe("lion")


def small(**changes) -> RunConfig:
    base = dict(experiment="fc-tanh", epochs=3, batch_size=64, lr=0.05, train_samples=256)
    return RunConfig(**{**base, **changes})


def records(run_dir: Path) -> list[dict]:
    out = [json.loads(line) for line in (run_dir / runlog.METRICS).read_text().splitlines()]
    for r in out:
        r.pop("time_s")
    return out


@pytest.mark.parametrize("recipe", ["sgd", "adamw"])
def test_a_run_killed_after_an_epoch_resumes_bit_identical_under_a_schedule(tmp_path, recipe):
    """The checkpoint holds the schedule: a run stopped after epoch 1 and resumed gives the
    uninterrupted run's metrics exactly."""
    cfg = small(recipe=recipe)
    train_run(cfg, tmp_path / "whole", CPU, quiet=True)
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    trainer = Trainer(cfg, stopped, CPU, runlog.RunLog(stopped))
    for epoch in range(trainer.start(), 2):
        trainer.epoch(epoch)
    del trainer  # the process dies here
    assert train_run(cfg, stopped, CPU, quiet=True) == "done"
    assert "resumed from the checkpoint of epoch 1" in (stopped / runlog.LOG).read_text()
    assert records(stopped) == records(tmp_path / "whole")


def test_a_decaying_schedule_is_not_extended_but_a_constant_rate_is(tmp_path):
    from mltools.errors import UsageError

    run_sweep([RunSpec(small(epochs=1, recipe="sgd"), tmp_path / "sgd")], "cpu", quiet=True)
    with pytest.raises(UsageError, match="epochs"):
        plan(RunSpec(small(epochs=2, recipe="sgd"), tmp_path / "sgd"))
    run_sweep([RunSpec(small(epochs=1), tmp_path / "paper")], "cpu", quiet=True)
    assert plan(RunSpec(small(epochs=2), tmp_path / "paper")) == "run"
    with pytest.raises(UsageError, match="recipe"):
        plan(RunSpec(small(epochs=1, recipe="sgd"), tmp_path / "paper"))


def test_runs_from_before_recipes_keep_their_optimizer(tmp_path):
    """A config.json without a recipe trained with plain SGD, or Adam where it says so."""
    run_sweep([RunSpec(small(epochs=1, recipe="adam"), tmp_path)], "cpu", quiet=True)
    config = json.loads((tmp_path / runlog.CONFIG).read_text())
    assert config["recipe"]["optimizer"] == "adam" and config["cpu"]
    del config["recipe"]
    config["optimizer"] = "adam"
    (tmp_path / runlog.CONFIG).write_text(json.dumps(config))
    assert plan(RunSpec(small(epochs=1, recipe="adam"), tmp_path)) == "skip"
    assert recipes.recipe_of({"optimizer": "sgd"})["name"] == "paper"


def test_recipe_flags_reach_the_run_and_bad_ones_exit_2(tmp_path):
    out = run_as_typed("best_practices.py",
        "--experiments", "fc-tanh", "--seeds", "1", "--epochs", "1", "--train-samples", "128",
        "--recipe", "sgd", "--momentum", "0.5", "--no-nesterov", "--clip", "2",
        "--out", "r", "--quiet", cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "recipe sgd (SGD, momentum 0.5" in out.stdout
    config = json.loads((tmp_path / "r/best_practices/fc-tanh/seed0/config.json").read_text())
    assert config["recipe"] == {
        **json.loads(json.dumps(recipes.asdict(recipes.RECIPES["sgd"]))),
        "momentum": 0.5,
        "nesterov": False,
        "clip": 2.0,
    }
    bad = run_as_typed(
        "best_practices.py", "--recipe", "paper", "--warmup", "0.1", "--out", "bad", cwd=tmp_path
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().count("\n") == 0 and "warm-up" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_weight_decay_on_a_mask_bottleneck_is_refused(tmp_path):
    out = subprocess.run(
        [sys.executable, str(ROOT / "bottleneck.py"), "--recipe", "sgd", "--out", "b"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and "frozen entries" in out.stderr
    assert not (tmp_path / "b").exists()
