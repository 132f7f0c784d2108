"""dfatools: Direct Feedback Alignment for any PyTorch model.

>>> model = dfatools.to_dfa(nn.Sequential(...), num_classes=10)
>>> F.cross_entropy(model(x), y).backward()   # DFA for hidden layers, BP for the top layer
"""
__version__ = "0.1.0"

from .alignment import Alignment, measure_alignment
from .bottleneck import Bottleneck
from .feedback import DFA, FeedbackPoint
from .inspect import find_dfa
from .pai import prealign
from .sequential import DFASequential, to_dfa

__all__ = ["Alignment", "Bottleneck", "DFA", "DFASequential", "FeedbackPoint", "find_dfa",
           "measure_alignment", "prealign", "to_dfa"]
