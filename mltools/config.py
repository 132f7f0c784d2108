"""A run's settings (DESIGN.md 6): the :class:`RunConfig` that config.json holds.

No torch here: sweeps plan, and reports read, runs without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from . import recipes

CNN_POINTS = ("all", "2019")
ARCHS = ("fc", "cnn", "bottleneck", "resnet", "transformer", "gpt")
TRANSFORMERS = ("transformer", "gpt")  # the architectures with norm, error_at and stream_norm
# RunConfig fields that say how to run, not what: they never make a folder hold another run.
RUNTIME_OPTIONS = ("data_dir", "download", "trust_checkpoints", "tensorboard")


@dataclass
class RunConfig:
    """Every setting of one run; saved in config.json."""

    experiment: str = "fc-tanh"
    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = False
    eval_split: str = "test"
    train_samples: int | None = None
    eval_samples: int | None = None  # None: the whole evaluation split
    arch: str = "fc"  # fc | cnn | bottleneck | resnet | transformer | gpt (ARCHS)
    method: str = "dfa"  # dfa | bp | fa | sign | drtp | shallow (dfatools.METHODS)
    act: str = "tanh"
    normalize: bool = True  # feedback normalization
    # How a point with more dimensions than the output gets its signal (dfatools.DFA): flat
    # (the paper's) | shared (one projection repeated over a block's positions)
    positions: str = "flat"
    batch_norm: bool = False
    input_dropout: float = 0.0
    dropout: float = 0.0  # after hidden Linear layers
    conv_dropout: float = 0.0  # Dropout2d after conv layers
    cnn_min_side: int = 32  # smaller CNN inputs are upsampled to this side
    cnn_points: str = "all"  # all: a point before every hidden weight layer | 2019: as
    # the 2019 code, none before the output (its Linear(576, 128) got BP)
    init: str = "std"  # std | pai
    bottleneck_size: int | None = None
    bottleneck_mode: str = "mask"  # mask | width
    bottleneck_points: str = "all"  # all | 2019 | 2019-nomask (experiments.BOTTLENECK_POINTS)
    width: int = 800  # bottleneck net width
    text: str | None = None  # the UTF-8 file of dataset "text" (mltools.text)
    context: int = 128  # text: characters per window
    lm_width: int = 128  # gpt: model width (heads of 32 dimensions)
    lm_depth: int = 4  # gpt: blocks
    lm_points: str = "macro"  # gpt: macro (every block) | micro (inside every block)
    # gpt, transformer: the block layout (models.NORMS: pre | post) and where the DFA node takes
    # the error (models.ERROR_SITES: logits, the output | hidden, the head's input)
    norm: str = "pre"
    error_at: str = "logits"
    epochs: int = 50
    batch_size: int = 128
    lr: float = 5e-4  # the peak of the recipe's schedule
    # How parameters are updated (mltools.recipes); a name is taken as that named recipe.
    recipe: recipes.Recipe = field(default_factory=recipes.Recipe)
    seed: int = 0
    trust_checkpoints: bool = False  # load old checkpoints with pickle (--trust-checkpoints)
    tensorboard: bool = False  # also write TensorBoard event files (mltools.board)

    def __post_init__(self) -> None:
        if isinstance(self.recipe, str):
            self.recipe = recipes.get_recipe(self.recipe)
        elif isinstance(self.recipe, dict):
            self.recipe = recipes.from_dict(self.recipe)

    def settings(self) -> dict:
        """What defines the result; a run folder holding other settings is another run."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_OPTIONS}
