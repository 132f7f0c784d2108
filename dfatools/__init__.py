"""dfatools: Direct Feedback Alignment for any PyTorch model.

>>> model = dfatools.to_dfa(nn.Sequential(...), num_classes=10)
>>> F.cross_entropy(model(x), y).backward()   # DFA for hidden layers, BP for the top layer
>>> model = dfatools.to_method(nn.Sequential(...), "fa", 10)  # or sign, drtp, shallow, bp
"""

__version__ = "0.1.0"

from .alignment import Alignment, measure_alignment
from .bottleneck import Bottleneck
from .fa import exact_layers, layer_method, to_fa, to_sign
from .feedback import DFA, FeedbackPoint
from .inspect import find_dfa
from .methods import METHODS, to_method
from .pai import prealign
from .sequential import DFASequential, to_dfa

__all__ = [
    "Alignment",
    "Bottleneck",
    "DFA",
    "DFASequential",
    "FeedbackPoint",
    "METHODS",
    "exact_layers",
    "find_dfa",
    "layer_method",
    "measure_alignment",
    "prealign",
    "to_dfa",
    "to_fa",
    "to_method",
    "to_sign",
]
