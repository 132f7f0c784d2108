"""Training recipes (DESIGN.md 12): how a network's parameters are updated, apart from the rate.

A :class:`Recipe` is an optimizer with its settings, weight decay (on weights only), a
learning-rate schedule stepped once per batch, and gradient-norm clipping. The learning rate
itself is the run's ``lr`` (the peak of the schedule), since each method gets its own.

Named recipes (:data:`RECIPES`):

* ``paper``: the 2019 paper's plain SGD at a constant rate (DESIGN.md 4).
* ``adam``: Adam with PyTorch's defaults at a constant rate, the optimizer of the DFA
  Transformers of Launay et al. 2020; the earlier Transformer runs used it.
* ``sgd``: what convolutional and fully connected networks are trained with today: SGD with
  Nesterov momentum 0.9, weight decay 5e-4 (the usual setting for small images, as in Wide
  ResNets), and a one-cycle schedule (Smith and Topin 2019: 30% warm-up, cosine decay to
  about 0), suited to short budgets.
* ``adamw``: what Transformers are trained with: AdamW (betas 0.9, 0.999), weight decay 0.05
  (DeiT's), 5% linear warm-up then cosine decay to 0, gradient norm clipped at 1 (as
  nanoGPT does).
* ``adam2020``: the recipe of the DFA Transformers of Launay et al. 2020: Adam, betas (0.9,
  0.999), a constant rate, gradient norm clipped at 0.5. With ``plateau`` (``--plateau``),
  ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (factor 0.2, patience 1) divides the rate by
  5 after each second epoch whose training loss did not improve, as their 1e-4 runs did. It
  steps on the training loss, never on the evaluated split, which in a study's final runs is
  the test set.

Weight decay applies to weights, not to biases and normalization parameters: a parameter of
one dimension is not decayed, the rule of timm and nanoGPT. A recipe without weight decay puts
every parameter in one group, so the optimizer states of runs written before recipes existed
still load.

The optimizers and schedules are ``torch.optim`` and ``torch.optim.lr_scheduler`` as they are;
torch is imported only where they are built, so reports read recipes without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("constant", "cosine", "onecycle")
# One-cycle's start at lr / 25 and end at lr / (25 * 1e4): PyTorch's defaults.
ONECYCLE_DIV = 25.0
ONECYCLE_FINAL_DIV = 1e4
# ReduceLROnPlateau's settings under ``plateau`` (Launay et al. 2020's).
PLATEAU_FACTOR = 0.2
PLATEAU_PATIENCE = 1


@dataclass(frozen=True)
class Recipe:
    """An optimizer, weight decay, a per-batch schedule and clipping; saved in config.json.

    ``warmup`` is the fraction of all steps spent warming up (``cosine``: linear from
    ``lr / warmup_steps`` to ``lr``; ``onecycle``: its first phase). ``clip``: the largest
    gradient norm over all parameters (None: no clipping).
    """

    name: str = "paper"
    optimizer: str = "sgd"  # sgd | adam | adamw (OPTIMIZERS)
    momentum: float = 0.0  # sgd
    nesterov: bool = False  # sgd
    beta1: float = 0.9  # adam, adamw
    beta2: float = 0.999  # adam, adamw
    weight_decay: float = 0.0  # on weights only
    schedule: str = "constant"  # constant | cosine | onecycle (SCHEDULES)
    warmup: float = 0.0  # fraction of the steps
    clip: float | None = None
    plateau: bool = False

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {SCHEDULES}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.schedule == "onecycle" and self.warmup == 0:
            raise ValueError("a one-cycle schedule needs a warm-up fraction above 0")
        if self.schedule == "constant" and self.warmup:
            raise ValueError("a constant schedule has no warm-up; choose cosine or onecycle")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum <= 0):
            raise ValueError("Nesterov momentum needs the sgd optimizer and a momentum above 0")
        if self.weight_decay < 0 or (self.clip is not None and not self.clip > 0):
            raise ValueError("weight decay is >= 0, and clip > 0 (or none)")
        for knob in ("momentum", "beta1", "beta2"):
            value = getattr(self, knob)
            if not 0 <= value < 1:  # at 1 or above the average never forgets: it diverges
                raise ValueError(f"{knob} must lie in [0, 1), got {value:g}")
        if self.plateau and self.schedule != "constant":
            raise ValueError("plateau lowers a constant rate; it does not go with a schedule")

    def describe(self) -> str:
        """One line, e.g. ``sgd (SGD, Nesterov momentum 0.9, weight decay 0.0005, onecycle
        with 30% warm-up)``."""
        parts = [self.optimizer.upper() if self.optimizer == "sgd" else self.optimizer]
        if self.optimizer == "sgd" and self.momentum:
            parts[0] += f", {'Nesterov ' if self.nesterov else ''}momentum {self.momentum:g}"
        if self.optimizer != "sgd":
            parts[0] = {"adam": "Adam", "adamw": "AdamW"}[self.optimizer]
            parts[0] += f" betas ({self.beta1:g}, {self.beta2:g})"
        if self.weight_decay:
            parts.append(f"weight decay {self.weight_decay:g}")
        schedule = f"{self.schedule} rate"
        if self.warmup:
            schedule = f"{self.schedule} with {self.warmup:.0%} warm-up"
        parts.append(schedule)
        if self.plateau:
            parts.append(f"x{PLATEAU_FACTOR:g} on a plateau of the training loss")
        if self.clip is not None:
            parts.append(f"gradient norm clipped at {self.clip:g}")
        return f"{self.name} ({', '.join(parts)})"


RECIPES: dict[str, Recipe] = {
    "paper": Recipe(),
    "adam": Recipe("adam", optimizer="adam"),
    "sgd": Recipe(
        "sgd", momentum=0.9, nesterov=True, weight_decay=5e-4, schedule="onecycle", warmup=0.3
    ),
    "adamw": Recipe(
        "adamw", optimizer="adamw", weight_decay=0.05, schedule="cosine", warmup=0.05, clip=1.0
    ),
    "adam2020": Recipe("adam2020", optimizer="adam", clip=0.5),
}
KNOBS = tuple(f.name for f in fields(Recipe) if f.name != "name")


def get_recipe(name: str, **changes) -> Recipe:
    """The named recipe with the knobs ``changes`` names set; ValueError with one line for an
    unknown name or knob, or a combination that does not work."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    unknown = set(changes) - set(KNOBS)
    if unknown:
        raise ValueError(f"unknown recipe settings {sorted(unknown)}; choose from {KNOBS}")
    return replace(RECIPES[name], **changes)


def recipe_of(config: dict) -> dict:
    """The recipe a run folder's config.json trained with, as a dict. Runs written before
    recipes existed trained with plain SGD, or Adam where their ``optimizer`` says so; a knob
    added since (``plateau``) had its default."""
    if isinstance(config.get("recipe"), dict):
        return {**asdict(Recipe()), **config["recipe"]}
    return asdict(RECIPES["adam" if config.get("optimizer") == "adam" else "paper"])


def from_dict(values: dict) -> Recipe:
    """A Recipe from its config.json form; keys it does not know are refused (ValueError)."""
    return Recipe(**values)


# -- building the optimizer and its schedule ------------------------------------------------------
def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Every parameter in model order (a frozen one gets no gradient, so no step): one group
    without decay, or, with decay, the weights (2 dimensions or more) decayed and the rest
    (biases, norm parameters) not."""
    params = list(model.parameters())
    if not weight_decay:
        return [{"params": params, "weight_decay": 0.0}]  # AdamW would add 0.01 otherwise
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]


def make_optimizer(recipe: Recipe, model: torch.nn.Module, lr: float) -> torch.optim.Optimizer:
    """The recipe's ``torch.optim`` optimizer over ``model``'s parameters, at rate ``lr``."""
    import torch

    groups = param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=recipe.nesterov)
    betas = (recipe.beta1, recipe.beta2)
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    return torch.optim.AdamW(groups, lr=lr, betas=betas)  # the groups carry the decay


def make_scheduler(
    recipe: Recipe, opt: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """The recipe's schedule over ``total_steps`` batches, to step after every optimizer step.
    Decaying schedules reach about 0 at the last step."""
    from torch.optim import lr_scheduler

    # The warm-up leaves the decay one step at least: a phase of no steps divides by zero.
    warmup = min(math.ceil(recipe.warmup * total_steps), total_steps - 1)
    if recipe.schedule == "onecycle":
        # OneCycleLR's rise ends at step pct_start * total_steps - 1: it must be after step 0
        # and before the last, or one phase is empty (so 1.5 steps of warm-up at least).
        pct_start = min(max(recipe.warmup, 1.5 / total_steps), 1 - 0.5 / total_steps)
        return lr_scheduler.OneCycleLR(
            opt,
            max_lr=[g["lr"] for g in opt.param_groups],
            total_steps=total_steps,
            pct_start=pct_start,
            anneal_strategy="cos",
            cycle_momentum=False,  # the recipe's momentum stays as it is
            div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV,
        )
    if recipe.schedule == "cosine":
        cosine = lr_scheduler.CosineAnnealingLR(opt, T_max=total_steps - warmup, eta_min=0.0)
        if not warmup:
            return cosine
        ramp = lr_scheduler.LinearLR(opt, start_factor=1 / warmup, total_iters=warmup)
        return lr_scheduler.SequentialLR(opt, [ramp, cosine], milestones=[warmup])
    return lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


def make_plateau(
    recipe: Recipe, opt: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The recipe's per-epoch ``ReduceLROnPlateau``, to step on each epoch's training loss;
    None without ``plateau``."""
    if not recipe.plateau:
        return None
    from torch.optim import lr_scheduler

    return lr_scheduler.ReduceLROnPlateau(
        opt, mode="min", factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE
    )
