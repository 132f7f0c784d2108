"""Every learning-signal method by name (DESIGN.md 7): one builder for them all.

- ``dfa``: a fixed random projection of the output error, sent to every feedback point
  (:func:`~dfatools.to_dfa`).
- ``bp``: the true gradient (the DFA model with its points switched off).
- ``fa``: back-propagated through a fixed random ``B_l`` in place of ``W_l`` (:func:`to_fa`).
- ``sign``: back-propagated through ``sign(W_l) * mean|W_l|`` in place of ``W_l``
  (:func:`to_sign`).
- ``frsf``, ``brsf``: back-propagated through ``|R_l| * sign(W_l)``, random magnitudes fixed
  or read at a new random offset every batch (:func:`to_rsf`).
- ``drtp``: DFA's projection of ``-onehot(target)`` in place of the error (``signal="target"``).
- ``shallow``: none; hidden layers keep their initial weights (``signal="none"``).

In every method the output layer gets its true gradient.
"""

from __future__ import annotations

from torch import nn

from .fa import to_fa, to_rsf, to_sign
from .inspect import find_dfa
from .sequential import to_dfa

METHODS = ("dfa", "bp", "fa", "sign", "drtp", "shallow", "brsf", "frsf")
"""Every method name :func:`to_method` takes, in the order the reports list them."""
_SIGNALS = {"drtp": "target", "shallow": "none"}


def to_method(
    model: nn.Module, method: str, num_classes: int, seed: int = 0, **options
) -> nn.Module:
    """A deep copy of ``model`` trained by ``method`` with a plain ``loss.backward()``.

    ``options`` go to :func:`~dfatools.to_dfa` (``points``, ``normalize``, ``feedback``,
    ``error``, ``exact_top``), so every method works on any model ``to_dfa`` takes. Every
    method keeps the DFA model's feedback points, so :func:`~dfatools.measure_alignment`
    measures all of them at the same places; ``seed`` seeds the DFA matrices (dfa, drtp),
    ``B_l`` (fa) and ``|R_l|`` (frsf, brsf). For ``bp`` the points are switched off, and the
    alignment measured is that of the DFA signal on the BP-trained network (the paper's BP
    baselines). For ``drtp``,
    call ``model.feedback.set_target(y)`` (class indices ``(N, *)``) before each ``backward``.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {METHODS}")
    dfa = to_dfa(model, num_classes, seed=seed, signal=_SIGNALS.get(method, "error"), **options)
    if method == "fa":
        return to_fa(dfa, seed=seed)
    if method == "sign":
        return to_sign(dfa)
    if method in ("brsf", "frsf"):
        return to_rsf(dfa, method, seed=seed)
    if method == "bp":
        find_dfa(dfa).switch_off()
    return dfa
