"""The tensor of a model's output that the DFA node sits on, and putting it back (DESIGN.md 11).

Models researchers load return structures: Hugging Face models a ``ModelOutput`` (a dict whose
keys are also attributes), others a dict, a tuple or a named tuple. ``output=`` names the
tensor ``y`` in it:

* a string: a key (dicts, ``ModelOutput``) or an attribute (``"logits"``, a named tuple's
  field);
* an int: an index of a tuple or list (``0``);
* a callable: ``output(structure)`` returns ``y``, which must stand in the structure itself, as
  an item, a value or an attribute, so that it can be replaced there;
* None: the output is ``y`` itself.

The model returns its own structure, with ``y`` replaced by what the DFA node returns.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, Union

import torch

OutputSpec = Union[None, str, int, Callable[[Any], torch.Tensor]]


def select(out: Any, spec: OutputSpec) -> torch.Tensor:
    """The tensor ``y`` that ``spec`` names in the model output ``out``."""
    if spec is None:
        return out
    if isinstance(spec, str):
        if isinstance(out, MutableMapping) and spec in out:
            return out[spec]
        if hasattr(out, spec):
            return getattr(out, spec)
        raise ValueError(
            f"output={spec!r}: the model returns a {type(out).__name__} without that key or "
            f"attribute{_keys(out)}"
        )
    if isinstance(spec, int):
        if isinstance(out, (tuple, list)) and -len(out) <= spec < len(out):
            return out[spec]
        raise ValueError(
            f"output={spec}: the model returns a {type(out).__name__}, not a tuple or list "
            "with that index"
        )
    if callable(spec):
        return spec(out)
    raise TypeError(f"output= takes a key or attribute name, an index or a callable, got {spec!r}")


def replace(out: Any, spec: OutputSpec, new: torch.Tensor) -> Any:
    """``out`` with the tensor ``spec`` names replaced by ``new`` (a tuple rebuilt, a dict or
    attribute set in place: the structure was made by this forward pass)."""
    if spec is None:
        return new
    if callable(spec) and not isinstance(spec, (str, int)):
        return _replace_found(out, spec(out), new)
    if isinstance(spec, str):
        if isinstance(out, MutableMapping) and spec in out:
            out[spec] = new  # a ModelOutput sets the attribute too
        elif spec in getattr(out, "_fields", ()):  # a named tuple
            return _with_item(out, out._fields.index(spec), new)
        else:
            setattr(out, spec, new)
        return out
    return _with_item(out, spec, new)


def _with_item(out: tuple | list, index: int, new: torch.Tensor) -> tuple | list:
    items = list(out)
    items[index] = new
    if isinstance(out, list):
        return items
    if hasattr(out, "_fields"):  # a named tuple
        return type(out)(*items)
    return type(out)(items)


def _replace_found(out: Any, old: torch.Tensor, new: torch.Tensor) -> Any:
    """``out`` with the tensor ``old`` replaced by ``new`` where it stands."""
    if out is old:
        return new
    if isinstance(out, MutableMapping):
        for key, value in out.items():
            if value is old:
                out[key] = new
                return out
    elif isinstance(out, (tuple, list)):
        for i, value in enumerate(out):
            if value is old:
                return _with_item(out, i, new)
    else:
        for key, value in vars(out).items() if hasattr(out, "__dict__") else ():
            if value is old:
                setattr(out, key, new)
                return out
    raise ValueError(
        f"the output= callable returned a tensor that is not an item, value or attribute of "
        f"the model's {type(out).__name__}; return one that stands in it, or name it by key, "
        "attribute or index"
    )


def _keys(out: Any) -> str:
    if isinstance(out, MutableMapping):
        return f" (keys: {', '.join(map(str, out))})"
    return ""
