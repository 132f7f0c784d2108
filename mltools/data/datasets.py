"""The single data path of the project: read image datasets from disk into normalized tensors.

Every dataset goes through the same steps: find the files, read them with the small readers below
(CIFAR pickles, IDX files, scikit-learn's digits), optionally split off a validation part, scale
to [0, 1], normalize per channel and move to the device once. torchvision is used only to download
files (``download=True``); it never reads them, so there is exactly one way data enters a run.

    ds = load_dataset("cifar10", data_dir="data")
    order = torch.Generator().manual_seed(0)
    for idx in iterate_batches(len(ds.y_train), 128, order, ds.x_train.device):
        x, y = ds.x_train[idx], ds.y_train[idx]
"""

from __future__ import annotations

import gzip
import io
import math
import os
import pickle
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

try:  # numpy >= 1.26 (numpy 2 moved numpy.core to numpy._core; 1.26 has both)
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:
    from numpy.core import multiarray as _multiarray
    from numpy.core import numeric as _numeric

NUMPY_CORES = ("numpy.core", "numpy._core")  # the module names arrays are pickled under
DATASETS = ("cifar10", "cifar100", "mnist", "fashion-mnist", "digits", "synthetic")
EVAL_SPLITS = ("test", "val")

# Fixed seed for every split (val split, digits train/test, synthetic data). It is independent of
# the run seed on purpose: all runs of a sweep must be evaluated on the same examples.
SPLIT_SEED = 0
VAL_FRACTION = 0.15

# Per-channel (mean, std) of the [0, 1]-scaled training images (DESIGN.md section 4).
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
NORMALIZATION = {
    "cifar10": CIFAR10_STATS,
    # CIFAR-100 uses the CIFAR-10 constants: the 2019 code did so, and the two datasets have
    # near-identical pixel statistics, so results stay comparable with the paper.
    "cifar100": CIFAR10_STATS,
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
}
NUM_CLASSES = {"cifar10": 10, "cifar100": 100, "mnist": 10, "fashion-mnist": 10, "digits": 10}

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR100_FOLDER = "cifar-100-python"
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
IDX_IMAGES_MAGIC = 2051  # 0x0803: unsigned bytes, 3 dimensions (N, H, W)
IDX_LABELS_MAGIC = 2049  # 0x0801: unsigned bytes, 1 dimension (N,)
# Where the Debian package dataset-fashion-mnist puts its .gz files.
FASHION_MNIST_SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"


class DataError(Exception):
    """Bad or missing data; str(err) is ONE line a CLI prints as-is (no traceback)."""

    def __init__(self, message: str):
        # Keep the one-line promise even when a wrapped exception has newlines in it.
        super().__init__(" ".join(str(message).splitlines()))


@dataclass
class Dataset:
    """A loaded dataset on one device: normalized float32 images ``(N, C, H, W)`` and int64
    labels ``(N,)``; or, for text, int64 character windows ``(N, T)`` and their next-character
    targets ``(N, T)``, with the vocabulary."""

    name: str
    x_train: torch.Tensor = field(repr=False)  # (N, C, H, W) float32, normalized
    y_train: torch.Tensor = field(repr=False)  # (N,) int64
    x_eval: torch.Tensor = field(repr=False)  # (M, C, H, W) float32, normalized
    y_eval: torch.Tensor = field(repr=False)  # (M,) int64
    num_classes: int
    eval_split: str  # "test" or "val"
    vocab: str | None = None  # text: the character of each class index

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The shape of one example: ``(C, H, W)``, or ``(T,)`` for text."""
        return tuple(int(s) for s in self.x_train.shape[1:])


# ----------------------------------------------------------------------------- readers


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle asked for a function or class that CIFAR batches never hold."""


def _latin1_encode(text: str, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """``_codecs.encode`` as pickles use it: Python 3 writes bytes at protocols < 3 as
    ``_codecs.encode(text, "latin1")``. Other codecs (compression among them) are refused."""
    if (
        not isinstance(text, str)
        or encoding.replace("-", "").lower() != "latin1"
        or errors != "strict"
    ):
        raise RefusedGlobal(f"_codecs.encode with codec {encoding!r}")
    return text.encode("latin-1")


# Everything a CIFAR batch pickle may name: numpy array and scalar reconstruction, under numpy 1's
# module names (the real files, pickled by Python 2) and numpy 2's (files re-saved since; protocol
# 5 builds arrays with _frombuffer), and the bytes helper of Python 3 pickles. None of these runs
# code or touches files; dicts, lists, str, bytes and numbers need no global at all.
CIFAR_PICKLE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
    **{(f"{core}.multiarray", "_reconstruct"): _multiarray._reconstruct for core in NUMPY_CORES},
    **{(f"{core}.multiarray", "scalar"): _multiarray.scalar for core in NUMPY_CORES},
    **{(f"{core}.numeric", "_frombuffer"): _numeric._frombuffer for core in NUMPY_CORES},
}


class CifarUnpickler(pickle.Unpickler):
    """An unpickler that builds only what CIFAR batches hold: dicts, lists, str, bytes, numbers
    and numpy arrays. pickle resolves every function or class a file names through
    ``find_class``, so refusing there keeps a planted file from running code."""

    def find_class(self, module: str, name: str) -> object:
        found = CIFAR_PICKLE_GLOBALS.get((module, name))
        if found is None:
            raise RefusedGlobal(f"{module}.{name}")
        return found


def unpickle_cifar(path: Path) -> dict:
    """The dict of one CIFAR batch file, keys as str. The real files were pickled by Python 2
    (their keys load as bytes with ``encoding="bytes"``); files re-saved by Python 3 have str
    keys."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    try:
        # From memory, not the file: a damaged length field then fails as a short read instead
        # of asking the file object for gigabytes.
        batch = CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except RefusedGlobal as e:
        raise DataError(
            f"{path}: refused: the pickle asks for {e}, which a CIFAR batch never "
            "holds and which could run code; replace the file with the original "
            "CIFAR download"
        ) from None
    except Exception as e:  # damaged pickles raise almost any type (EOFError, KeyError, ...)
        raise DataError(f"{path}: not a readable CIFAR pickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR batch (a {type(batch).__name__}, not a dict)")
    return {(k.decode("latin-1") if isinstance(k, bytes) else k): v for k, v in batch.items()}


def read_cifar_pickle(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python pickle: images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    batch = unpickle_cifar(path)
    missing = [k for k in ("data", label_key) if k not in batch]
    if missing:
        raise DataError(f"{path}: not a CIFAR batch (no {' or '.join(missing)} entry)")
    try:
        data = np.asarray(batch["data"], dtype=np.uint8)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise DataError(f"{path}: not a readable CIFAR batch ({type(e).__name__}: {e})") from None
    # Rows are 1024 red, then 1024 green, then 1024 blue values, each row-major 32x32.
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: expected data of shape (N, 3072), got {tuple(data.shape)}")
    if labels.shape != (data.shape[0],):
        raise DataError(f"{path}: {data.shape[0]} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels


def read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (raw or .gz) into a uint8 array of its stored dims."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            # bytearray, not bytes: numpy views of it are writable, so torch can take them as-is.
            raw = bytearray(f.read())
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: a damaged .gz stream
        raise DataError(f"{path}: cannot read ({type(e).__name__}: {e})") from None
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(
            f"{path}: bad magic number {found}, expected {magic}; not an IDX file of this kind"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)  # exact: np.prod would wrap around for absurd headers
    if len(raw) - header != expected:
        raise DataError(
            f"{path}: size mismatch: header dims {dims} need {expected} bytes, "
            f"file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    """Raise DataError if any label is outside [0, num_classes): catches wrong or mixed-up files."""
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{where}: labels outside [0, {num_classes}): min {labels.min()}, max {labels.max()}"
        )


# ----------------------------------------------------------------------------- finding files


def find_dir(
    candidates: Sequence[Path], names: Sequence[str], allow_gz: bool
) -> dict[str, Path] | None:
    """First candidate folder holding every file of `names` (raw, else .gz), as name -> path."""
    for folder in candidates:
        found = {}
        for name in names:
            for path in (folder / name, folder / f"{name}.gz") if allow_gz else (folder / name,):
                if path.is_file():
                    found[name] = path
                    break
        if len(found) == len(names):
            return found
    return None


def dataset_files(name: str, data_dir: Path) -> tuple[list[Path], list[str], bool]:
    """Where to look for `name`, which files it needs, and whether .gz copies count."""
    if name == "cifar10":
        return [data_dir / CIFAR10_FOLDER, data_dir], [*CIFAR10_TRAIN_FILES, "test_batch"], False
    if name == "cifar100":
        return [data_dir / CIFAR100_FOLDER, data_dir], ["train", "test"], False
    if name == "mnist":
        return [data_dir / "MNIST" / "raw", data_dir], list(IDX_FILES.values()), True
    # fashion-mnist
    places = [data_dir / "FashionMNIST" / "raw", data_dir, Path(FASHION_MNIST_SYSTEM_DIR)]
    return places, list(IDX_FILES.values()), True


def fetch(name: str, data_dir: Path) -> None:
    """Fetch the files with torchvision into its usual layout under data_dir; reading is ours."""
    try:
        import torchvision.datasets as tvd  # imported here: only downloads need torchvision

        cls = {
            "cifar10": tvd.CIFAR10,
            "cifar100": tvd.CIFAR100,
            "mnist": tvd.MNIST,
            "fashion-mnist": tvd.FashionMNIST,
        }[name]
        # CIFAR archives hold both splits; for (Fashion-)MNIST each call fetches all four files.
        cls(root=str(data_dir), train=True, download=True)
    except Exception as e:  # network, disk, checksum: all end the run the same way
        raise DataError(
            f"download of {name} into {data_dir} failed: {type(e).__name__}: {e}"
        ) from None


def locate(name: str, data_dir: Path, allow_download: bool) -> dict[str, Path]:
    """Paths of the files of `name`, downloading them first when missing and allowed."""
    places, names, allow_gz = dataset_files(name, data_dir)
    found = find_dir(places, names, allow_gz)
    if found is None and allow_download:
        fetch(name, data_dir)
        found = find_dir(places, names, allow_gz)
    if found is not None:
        return found
    wanted = ", ".join(f"{n}[.gz]" if allow_gz else n for n in names)
    searched = ", ".join(os.fspath(p) for p in places)
    how = "run with --download"
    if name == "fashion-mnist":
        how += ", or apt-get install dataset-fashion-mnist"
    how += f", or put the files in {os.fspath(places[0])}"
    raise DataError(f"{name} not found: looked for {wanted} in {searched}; {how}")


# ----------------------------------------------------------------------------- datasets as arrays
# Each loader returns (x_train, y_train, x_test, y_test) as numpy arrays; x is uint8 (N, C, H, W)
# or float32 already in [0, 1]. The test part is None when `need_test` is False (val mode).


def load_cifar(name: str, data_dir: Path, allow_download: bool, need_test: bool):
    """CIFAR-10 (data_batch_1..5, test_batch) or CIFAR-100 (train, test) as uint8 arrays."""
    files = locate(name, data_dir, allow_download)
    label_key = "labels" if name == "cifar10" else "fine_labels"
    train_names = CIFAR10_TRAIN_FILES if name == "cifar10" else ("train",)
    test_name = "test_batch" if name == "cifar10" else "test"
    parts = [read_cifar_pickle(files[n], label_key) for n in train_names]
    x_train = np.concatenate([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
    y_train = np.concatenate([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
    check_labels(y_train, NUM_CLASSES[name], os.fspath(files[train_names[0]].parent))
    if not need_test:
        return x_train, y_train, None, None
    x_test, y_test = read_cifar_pickle(files[test_name], label_key)
    check_labels(y_test, NUM_CLASSES[name], os.fspath(files[test_name]))
    return x_train, y_train, x_test, y_test


def load_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from an IDX images/labels file pair."""
    x = read_idx(images, IDX_IMAGES_MAGIC)
    y = read_idx(labels, IDX_LABELS_MAGIC).astype(np.int64)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"{images}: {x.shape[0]} images but {labels} has {y.shape[0]} labels")
    check_labels(y, 10, os.fspath(labels))
    return x[:, None], y


def load_mnist_like(name: str, data_dir: Path, allow_download: bool, need_test: bool):
    """MNIST or Fashion-MNIST from IDX files as uint8 arrays."""
    files = locate(name, data_dir, allow_download)
    x_train, y_train = load_idx_pair(
        files[IDX_FILES["train_images"]], files[IDX_FILES["train_labels"]]
    )
    if not need_test:
        return x_train, y_train, None, None
    x_test, y_test = load_idx_pair(files[IDX_FILES["test_images"]], files[IDX_FILES["test_labels"]])
    return x_train, y_train, x_test, y_test


def load_digits_arrays():
    """scikit-learn digits: fixed stratified 80/20 split, images (N, 1, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits  # bundled with scikit-learn, no download
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)  # raw values are 0..16
    y = digits.target.astype(np.int64)
    # random_state fixes the split, so no global RNG state can change the test set.
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=SPLIT_SEED
    )
    return x_train, y_train, x_test, y_test


def synthetic_arrays(shape: Sequence[int], num_classes: int, sizes: Sequence[int]):
    """Standard-normal float32 images of `shape` and uniform labels; fixed seed. For benchmarks
    only."""
    shape = tuple(int(s) for s in shape)
    sizes = tuple(int(s) for s in sizes)
    if len(shape) != 3 or min(shape) < 1:
        raise DataError(f"synthetic_shape must be three positive ints (C, H, W), got {shape}")
    if len(sizes) != 2 or min(sizes) < 1:
        raise DataError(f"synthetic_sizes must be two positive ints (train, test), got {sizes}")
    if num_classes < 1:
        raise DataError(f"synthetic_classes must be >= 1, got {num_classes}")
    rng = np.random.default_rng(SPLIT_SEED)
    out = []
    for n in sizes:
        out.append(rng.standard_normal((n, *shape), dtype=np.float32))
        out.append(rng.integers(0, num_classes, size=n, dtype=np.int64))
    return tuple(out)


# ----------------------------------------------------------------------------- splits and tensors


def val_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val) of the fixed-seed 85/15 split of range(n), each in ascending order."""
    n_val = int(round(n * VAL_FRACTION))
    if n_val < 1 or n_val >= n:
        raise DataError(f"cannot make an 85/15 validation split of {n} training samples")
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    # Sorted so that "the first N training samples" keeps the file order in both modes.
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def to_tensor(x: np.ndarray, stats, device: torch.device) -> torch.Tensor:
    """(N, C, H, W) array -> float32 tensor on device: uint8 scaled to [0, 1], then
    (x - mean) / std."""
    # Move before converting: uint8 is 4x less to copy to a GPU, and the math then runs there.
    t = torch.from_numpy(np.ascontiguousarray(x)).to(device)
    # For float32 input .float() is a no-op and the in-place ops below write into `x`: fine, every
    # array reaching here is a fresh one built by this module.
    t = t.float()
    if x.dtype == np.uint8:
        t.div_(255.0)
    if stats is not None:
        mean, std = (
            torch.tensor(s, dtype=torch.float32, device=device).view(1, -1, 1, 1) for s in stats
        )
        t.sub_(mean).div_(std)
    return t


def keep_first(x: np.ndarray, y: np.ndarray, n: int | None, what: str, kind: str):
    """The first ``n`` samples of ``(x, y)`` (all of them when ``n`` is None); ``what`` names the
    setting and ``kind`` the samples in the error raised when there are fewer than ``n``."""
    if n is None:
        return x, y
    if n > len(y):
        raise DataError(f"{what}={n} exceeds the {len(y)} {kind}")
    return x[:n], y[:n]


def load_dataset(
    name: str,
    data_dir: str = "data",
    download: bool = False,
    eval_split: str = "test",
    train_samples: int | None = None,
    device: str | torch.device = "cpu",
    eval_samples: int | None = None,
    synthetic_shape=(3, 32, 32),
    synthetic_classes: int = 10,
    synthetic_sizes=(50000, 10000),
) -> Dataset:
    """Load `name` as normalized tensors on `device`.

    eval_split "test": train on the whole training set, evaluate on the test set. "val": a
    fixed-seed 85/15 split of the training set; eval is the 15% part and the test set is not
    read. train_samples keeps the first N training samples (after the val split), eval_samples
    the first N evaluation samples (smoke runs and benchmarks: the alignment batch is their
    first 128). Text datasets are read by :func:`mltools.data.text.load_text`.
    """
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    if eval_split not in EVAL_SPLITS:
        raise DataError(f"unknown eval_split {eval_split!r}; valid: {', '.join(EVAL_SPLITS)}")
    for what, n in (("train_samples", train_samples), ("eval_samples", eval_samples)):
        if n is not None and n < 1:
            raise DataError(f"{what} must be >= 1, got {n}")
    device = torch.device(device)
    need_test = eval_split == "test"
    root = Path(data_dir)

    if name in ("cifar10", "cifar100"):
        x_train, y_train, x_test, y_test = load_cifar(name, root, download, need_test)
        stats, num_classes = NORMALIZATION[name], NUM_CLASSES[name]
    elif name in ("mnist", "fashion-mnist"):
        x_train, y_train, x_test, y_test = load_mnist_like(name, root, download, need_test)
        stats, num_classes = NORMALIZATION[name], NUM_CLASSES[name]
    elif name == "digits":
        x_train, y_train, x_test, y_test = load_digits_arrays()
        # No published constants: use the (scalar) mean/std of the fixed 80% training split, the
        # same in test and val mode, like the fixed constants of the other datasets.
        stats = ((float(x_train.mean()),), (float(x_train.std()),))
        num_classes = NUM_CLASSES[name]
    else:  # synthetic: already standard normal, nothing to normalize
        x_train, y_train, x_test, y_test = synthetic_arrays(
            synthetic_shape, synthetic_classes, synthetic_sizes
        )
        stats, num_classes = None, int(synthetic_classes)

    if eval_split == "val":
        train_idx, val_idx = val_split(len(y_train))
        x_train, y_train, x_test, y_test = (
            x_train[train_idx],
            y_train[train_idx],
            x_train[val_idx],
            y_train[val_idx],
        )
    x_train, y_train = keep_first(
        x_train, y_train, train_samples, "train_samples", f"training samples of {name}"
    )
    x_test, y_test = keep_first(
        x_test, y_test, eval_samples, "eval_samples", f"{eval_split} samples of {name}"
    )

    return Dataset(
        name=name,
        x_train=to_tensor(x_train, stats, device),
        y_train=torch.from_numpy(np.ascontiguousarray(y_train, dtype=np.int64)).to(device),
        x_eval=to_tensor(x_test, stats, device),
        y_eval=torch.from_numpy(np.ascontiguousarray(y_test, dtype=np.int64)).to(device),
        num_classes=num_classes,
        eval_split=eval_split,
    )


def iterate_batches(
    n: int, batch_size: int, generator: torch.Generator, device
) -> Iterator[torch.Tensor]:
    """Yield index tensors (on device) of a seeded random permutation of range(n), in batches of
    batch_size (the last one smaller)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # randperm must run where the generator lives; the indices then move to the data's device once.
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]
