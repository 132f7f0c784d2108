"""A run's settings (DESIGN.md 6): the :class:`RunConfig` that config.json holds, and
:func:`read`, the one way a config.json is turned back into settings.

No torch here: sweeps plan, and reports read, runs without it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from mltools.models import architectures
from mltools.models.architectures import ARCHS, ModelOptions
from mltools.runs import recipes

__all__ = ["ARCHS", "RunConfig", "read", "upgrade"]

# RunConfig fields that say how to run, not what: they never make a folder hold another run.
RUNTIME_OPTIONS = ("data_dir", "download", "trust_checkpoints", "tensorboard")


@dataclass
class RunConfig:
    """Every setting of one run; saved in config.json (``model`` as a nested object).

    ``model`` holds the options of ``arch`` (:mod:`mltools.models.architectures`): its options
    dataclass, a dict of its option names, or None for its defaults.
    """

    experiment: str = "fc-tanh"
    # -- data
    dataset: str = "digits"
    data_dir: str = "data"
    download: bool = False
    eval_split: str = "test"
    train_samples: int | None = None
    eval_samples: int | None = None  # None: the whole evaluation split
    text: str | None = None  # the UTF-8 file of dataset "text" (mltools.data.text)
    context: int = 128  # text: characters per window
    # -- the network
    arch: str = "fc"  # architectures.ARCHS
    model: ModelOptions | None = None
    # -- the method
    method: str = "dfa"  # dfa | bp | fa | sign | drtp | shallow | brsf | frsf (dfatools.METHODS)
    normalize: bool = True  # feedback normalization
    # How a point with more dimensions than the output gets its signal (dfatools.DFA): flat
    # (the paper's) | shared (one projection repeated over a block's positions)
    positions: str = "flat"
    init: str = "std"  # std | pai
    # -- training
    epochs: int = 50
    batch_size: int = 128
    lr: float = 5e-4  # the peak of the recipe's schedule
    # How parameters are updated (mltools.runs.recipes); a name is taken as that named recipe.
    recipe: recipes.Recipe = field(default_factory=recipes.Recipe)
    seed: int = 0
    trust_checkpoints: bool = False  # load old checkpoints with pickle (--trust-checkpoints)
    tensorboard: bool = False  # also write TensorBoard event files (mltools.reports.board)

    def __post_init__(self) -> None:
        self.model = architectures.options_of(self.arch, self.model)
        if isinstance(self.recipe, str):
            self.recipe = recipes.get_recipe(self.recipe)
        elif isinstance(self.recipe, dict):
            self.recipe = recipes.from_dict(self.recipe)

    def settings(self) -> dict:
        """What defines the result; a run folder holding other settings is another run."""
        return {k: v for k, v in asdict(self).items() if k not in RUNTIME_OPTIONS}


FIELDS = frozenset(f.name for f in fields(RunConfig))


def upgrade(config: dict) -> dict:
    """A config.json object in today's layout: the options of a file written before they were
    nested (flat keys such as ``lm_width``, ``bottleneck_size``) moved under ``model`` with their
    architecture's names, other architectures' keys dropped, and the recipe as a dict
    (:func:`recipes.recipe_of`: a file written before recipes had the paper's or Adam; a
    recipe's name is kept). Other keys (status, provenance) are kept."""
    flat = {k: v for k, v in config.items() if k in architectures.FLAT_NAMES}
    out = {k: v for k, v in config.items() if k not in architectures.FLAT_NAMES}
    arch = str(config.get("arch", "fc"))
    if "model" not in config and arch in architectures.ARCHITECTURES:
        out["model"] = architectures.from_flat(arch, flat)
    if not isinstance(config.get("recipe"), (str, recipes.Recipe)):  # a name stays a name
        out["recipe"] = recipes.recipe_of(config)
    out.pop("optimizer", None)  # read into the recipe
    return out


def read(config: dict) -> RunConfig:
    """The RunConfig a config.json object describes, from any version of the file: settings
    added since it was written have their defaults. ValueError for a file no version wrote."""
    known = {k: v for k, v in upgrade(config).items() if k in FIELDS}
    try:
        return RunConfig(**known)
    except TypeError as err:  # an option of the wrong type (a damaged or hand-edited file)
        raise ValueError(f"config.json: {err}") from None
