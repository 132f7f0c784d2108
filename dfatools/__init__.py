"""dfatools: Direct Feedback Alignment for any PyTorch model.

>>> model = dfatools.to_dfa(nn.Sequential(...), num_classes=10)
>>> F.cross_entropy(model(x), y).backward()   # DFA for hidden layers, BP for the top layer
>>> model = dfatools.to_dfa(resnet18(num_classes=10), 10, points=[BasicBlock])  # any model
>>> model = dfatools.to_method(net, "fa", 10)  # or sign, brsf, frsf, drtp, shallow, bp
>>> dfatools.measure_alignment(model, x, y)    # the paper's alignment at every point
"""

__version__ = "0.5.0"

from .alignment import Alignment, cross_entropy, measure_alignment
from .bottleneck import Bottleneck
from .fa import exact_layers, layer_method, to_fa, to_rsf, to_sign
from .feedback import DFA, FeedbackPoint
from .inspect import backprop, find_dfa
from .methods import METHODS, to_method
from .pai import prealign
from .placement import original_state_dict
from .sequential import DFASequential, to_dfa

__all__ = [
    "Alignment",
    "Bottleneck",
    "DFA",
    "DFASequential",
    "FeedbackPoint",
    "METHODS",
    "backprop",
    "cross_entropy",
    "exact_layers",
    "find_dfa",
    "layer_method",
    "measure_alignment",
    "original_state_dict",
    "prealign",
    "to_dfa",
    "to_fa",
    "to_method",
    "to_rsf",
    "to_sign",
]
