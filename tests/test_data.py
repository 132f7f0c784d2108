"""Tests of mltools.data.datasets on tiny files written in the real on-disk formats (no network, CPU
only)."""

import codecs
import gzip
import io
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from mltools.data import datasets
from mltools.data.datasets import DATASETS, DataError, Dataset, iterate_batches, load_dataset

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
FASHION_MEAN, FASHION_STD = 0.2860, 0.3530


@pytest.fixture(autouse=True)
def no_system_fashion_mnist(tmp_path, monkeypatch):
    """Tests must not see (or depend on) the Debian fashion-mnist files of this machine."""
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(tmp_path / "no-system-dir"))


# ------------------------------------------------------------------------- writers of real formats


def cifar_rows(n, seed):
    """(n, 3072) random uint8 rows, as stored under b"data"."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, 3072), dtype=np.uint8)


class Python2Pickler(pickle._Pickler):
    """Pickles as Python 2 did for the real CIFAR files: str and bytes as Python 2 ``str``
    (SHORT_BINSTRING/BINSTRING opcodes), which Python 3 loads as bytes with encoding="bytes"."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        raw = obj.encode("latin-1") if isinstance(obj, str) else obj
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)

    dispatch[str] = save_py2_str
    dispatch[bytes] = save_py2_str


def python2_pickle(obj) -> bytes:
    """``obj`` pickled the way the real CIFAR batch files were (protocol 2, numpy 1 names)."""
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue().replace(b"numpy._core.", b"numpy.core.")


CIFAR_STYLES = {
    "python2": lambda batch: python2_pickle(batch),  # the real files: bytes keys, Python 2 str
    "protocol2": lambda batch: pickle.dumps(batch, protocol=2),  # bytes via _codecs.encode
    "resaved": lambda batch: pickle.dumps({k.decode(): v for k, v in batch.items()}, protocol=5),
}


def write_batch(path, batch, style="protocol2"):
    path.write_bytes(CIFAR_STYLES[style](batch))


def write_cifar10(folder, per_batch=4, seed=1, style="protocol2"):
    """data_batch_1..5 and test_batch as python pickles; returns (train rows, train labels,
    test rows, test labels)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    train_rows, train_labels = [], []
    for i in range(1, 6):
        rows = cifar_rows(per_batch, seed + i)
        labels = [int(v) for v in rng.integers(0, 10, size=per_batch)]  # real files store a list
        write_batch(
            folder / f"data_batch_{i}",
            {
                b"batch_label": f"training batch {i} of 5".encode(),
                b"labels": labels,
                b"data": rows,
                b"filenames": [b"x.png"] * per_batch,
            },
            style,
        )
        train_rows.append(rows)
        train_labels += labels
    test_rows = cifar_rows(3, seed + 100)
    test_labels = [int(v) for v in rng.integers(0, 10, size=3)]
    write_batch(
        folder / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_labels,
            b"data": test_rows,
            b"filenames": [b"x.png"] * 3,
        },
        style,
    )
    return np.concatenate(train_rows), train_labels, test_rows, test_labels


def write_cifar100(folder, seed=2):
    """train and test pickles with fine and coarse labels; returns (train rows, fine, test rows,
    fine)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for split, n in (("train", 7), ("test", 4)):
        rows = cifar_rows(n, seed + n)
        fine = [int(v) for v in rng.integers(0, 100, size=n)]
        with open(folder / split, "wb") as f:
            pickle.dump(
                {
                    b"filenames": [b"x.png"] * n,
                    b"batch_label": split.encode(),
                    b"fine_labels": fine,
                    b"coarse_labels": [v // 5 for v in fine],
                    b"data": rows,
                },
                f,
                protocol=2,
            )
        out += [rows, fine]
    return tuple(out)


def idx_images(images):
    return struct.pack(">IIII", 2051, *images.shape) + images.astype(np.uint8).tobytes()


def idx_labels(labels):
    return struct.pack(">II", 2049, len(labels)) + np.asarray(labels, dtype=np.uint8).tobytes()


def write_idx_set(folder, n_train=40, n_test=6, gz=False, seed=3):
    """The four MNIST IDX files (raw or .gz). Pixel [0, 0] of training image i is i, to identify
    it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    x_train = rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8)
    x_train[:, 0, 0] = np.arange(n_train)
    y_train = rng.integers(0, 10, size=n_train)
    x_test = rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8)
    x_test[:, 0, 0] = 255  # never an index of a training image (n_train < 255)
    y_test = rng.integers(0, 10, size=n_test)
    contents = {
        "train-images-idx3-ubyte": idx_images(x_train),
        "train-labels-idx1-ubyte": idx_labels(y_train),
        "t10k-images-idx3-ubyte": idx_images(x_test),
        "t10k-labels-idx1-ubyte": idx_labels(y_test),
    }
    for name, blob in contents.items():
        if gz:
            with gzip.open(folder / f"{name}.gz", "wb") as f:
                f.write(blob)
        else:
            (folder / name).write_bytes(blob)
    return x_train, y_train, x_test, y_test


def expected_pixel(v, mean, std):
    """Independent computation of a normalized pixel, in float64."""
    return (v / 255.0 - mean) / std


# ----------------------------------------------------------------------------- CIFAR


@pytest.mark.parametrize(
    "in_folder, style", [(True, "python2"), (False, "protocol2"), (True, "resaved")]
)
def test_cifar10_values_and_labels(tmp_path, in_folder, style):
    folder = tmp_path / "cifar-10-batches-py" if in_folder else tmp_path
    train_rows, train_labels, test_rows, test_labels = write_cifar10(folder, style=style)
    ds = load_dataset("cifar10", data_dir=str(tmp_path))
    assert isinstance(ds, Dataset) and ds.name == "cifar10" and ds.eval_split == "test"
    assert ds.x_train.shape == (20, 3, 32, 32) and ds.x_eval.shape == (3, 3, 32, 32)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.y_train.tolist() == train_labels and ds.y_eval.tolist() == test_labels
    # Row layout: channel c, row h, column w is at c*1024 + h*32 + w.
    for i, c, h, w in [(0, 0, 0, 0), (5, 1, 7, 30), (19, 2, 31, 31), (11, 2, 0, 17)]:
        v = int(train_rows[i, c * 1024 + h * 32 + w])
        assert ds.x_train[i, c, h, w].item() == pytest.approx(
            expected_pixel(v, CIFAR_MEAN[c], CIFAR_STD[c]), abs=1e-5
        )
    v = int(test_rows[2, 1 * 1024 + 3 * 32 + 4])
    assert ds.x_eval[2, 1, 3, 4].item() == pytest.approx(
        expected_pixel(v, CIFAR_MEAN[1], CIFAR_STD[1]), abs=1e-5
    )


def test_cifar100_fine_labels_and_cifar10_constants(tmp_path):
    train_rows, train_fine, test_rows, test_fine = write_cifar100(tmp_path / "cifar-100-python")
    ds = load_dataset("cifar100", data_dir=str(tmp_path))
    assert (
        ds.num_classes == 100
        and ds.x_train.shape == (7, 3, 32, 32)
        and ds.x_eval.shape == (4, 3, 32, 32)
    )
    assert ds.y_train.tolist() == train_fine and ds.y_eval.tolist() == test_fine
    v = int(train_rows[6, 2 * 1024 + 10 * 32 + 20])
    assert ds.x_train[6, 2, 10, 20].item() == pytest.approx(
        expected_pixel(v, CIFAR_MEAN[2], CIFAR_STD[2]), abs=1e-5
    )


def test_corrupt_cifar_pickle_names_file(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset("cifar10", data_dir=str(tmp_path))


class Payload:
    """Unpickling this calls ``call(*args)``: how a planted pickle runs code."""

    def __init__(self, call, *args):
        self.call, self.args = call, args

    def __reduce__(self):
        return self.call, self.args


def planted_payloads(marker):
    """Pickled objects that would each create ``marker`` if unpickled unsafely."""
    return {
        "os.system": Payload(os.system, f"touch {marker}"),
        "builtins.open": Payload(open, str(marker), "w"),
        "builtins.exec": Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    }


@pytest.mark.parametrize("payload", ["os.system", "builtins.open", "builtins.exec"])
@pytest.mark.parametrize("where", ["data", "labels", "top"])
def test_planted_cifar_pickle_is_refused_and_runs_nothing(tmp_path, payload, where):
    marker = tmp_path / "pwned"
    write_cifar10(tmp_path)
    evil = planted_payloads(marker)[payload]
    batch = (
        evil
        if where == "top"
        else {b"data": cifar_rows(2, 0), b"labels": [1, 2], where.encode(): evil}
    )
    (tmp_path / "data_batch_2").write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", data_dir=str(tmp_path))
    message = str(err.value)
    assert "data_batch_2" in message and "refused" in message and "\n" not in message
    assert not marker.exists()


def test_codecs_encode_only_decodes_latin1(tmp_path):
    """Python 3 pickles bytes as _codecs.encode(text, "latin1"); another codec is refused."""
    path = tmp_path / "data_batch_1"
    path.write_bytes(
        pickle.dumps({b"data": Payload(codecs.encode, "x" * 3072, "rot13")}, protocol=2)
    )
    with pytest.raises(DataError, match="refused.*rot13"):
        datasets.read_cifar_pickle(path, "labels")


@pytest.mark.parametrize(
    "batch, problem",
    [
        ([1, 2], "not a dict"),
        ({b"data": cifar_rows(2, 0)}, "no labels"),
        ({b"data": [[300] * 3072], b"labels": [1]}, "OverflowError"),
        ({b"data": cifar_rows(2, 0), b"labels": {"a": 1}}, "TypeError"),
    ],
)
def test_cifar_pickle_of_the_wrong_shape_is_one_line(tmp_path, batch, problem):
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(DataError, match=problem) as err:
        datasets.read_cifar_pickle(path, "labels")
    assert "data_batch_1" in str(err.value)


# --------------------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize(
    "layout,gz", [("torchvision", False), ("torchvision", True), ("flat", False), ("flat", True)]
)
def test_mnist_layouts_raw_and_gz(tmp_path, layout, gz):
    folder = tmp_path / "MNIST" / "raw" if layout == "torchvision" else tmp_path
    x_train, y_train, x_test, y_test = write_idx_set(folder, gz=gz)
    ds = load_dataset("mnist", data_dir=str(tmp_path))
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.x_eval.shape == (6, 1, 28, 28)
    assert ds.input_shape == (1, 28, 28)
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_eval.tolist() == y_test.tolist()
    for i, h, w in [(0, 0, 0), (13, 5, 27), (39, 27, 27)]:
        v = int(x_train[i, h, w])
        assert ds.x_train[i, 0, h, w].item() == pytest.approx(
            expected_pixel(v, MNIST_MEAN, MNIST_STD), abs=1e-5
        )
    v = int(x_test[4, 14, 9])
    assert ds.x_eval[4, 0, 14, 9].item() == pytest.approx(
        expected_pixel(v, MNIST_MEAN, MNIST_STD), abs=1e-5
    )


def test_fashion_mnist_torchvision_layout_and_constants(tmp_path):
    x_train, y_train, _, _ = write_idx_set(tmp_path / "FashionMNIST" / "raw", gz=True)
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    assert ds.y_train.tolist() == y_train.tolist()
    v = int(x_train[7, 20, 3])
    assert ds.x_train[7, 0, 20, 3].item() == pytest.approx(
        expected_pixel(v, FASHION_MEAN, FASHION_STD), abs=1e-5
    )


def test_fashion_mnist_system_dir_is_searched(tmp_path, monkeypatch):
    system = tmp_path / "usr-share-datasets-fashion-mnist"
    _, y_train, _, _ = write_idx_set(system, gz=True)
    monkeypatch.setattr(datasets, "FASHION_MNIST_SYSTEM_DIR", str(system))
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path / "nonexistent"))
    assert ds.y_train.tolist() == y_train.tolist()


def test_bad_magic_number_names_file(tmp_path):
    write_idx_set(tmp_path)
    bad = tmp_path / "train-images-idx3-ubyte"
    blob = bytearray(bad.read_bytes())
    blob[:4] = struct.pack(">I", 2049)
    bad.write_bytes(bytes(blob))
    with pytest.raises(DataError, match="magic") as err:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(bad) in str(err.value)


def test_truncated_idx_is_size_mismatch(tmp_path):
    write_idx_set(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(DataError, match="size mismatch") as err:
        load_dataset("mnist", data_dir=str(tmp_path))
    assert str(bad) in str(err.value)


def test_image_label_count_mismatch(tmp_path):
    write_idx_set(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_labels([1, 2, 3]))
    with pytest.raises(DataError, match="labels"):
        load_dataset("mnist", data_dir=str(tmp_path))


# ----------------------------------------------------------------------------- errors


def test_missing_mnist_names_searched_places(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    assert f"in {tmp_path / 'MNIST' / 'raw'}, {tmp_path};" in msg
    assert "--download" in msg and "train-images-idx3-ubyte" in msg


def test_missing_fashion_mnist_hints_apt_and_system_dir(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion-mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg
    assert (
        str(tmp_path / "FashionMNIST" / "raw") in msg and datasets.FASHION_MNIST_SYSTEM_DIR in msg
    )
    assert "apt-get install dataset-fashion-mnist" in msg and "--download" in msg


@pytest.mark.parametrize(
    "name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")]
)
def test_missing_cifar_names_searched_places(tmp_path, name, folder):
    with pytest.raises(DataError) as err:
        load_dataset(name, data_dir=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and str(tmp_path / folder) in msg and "--download" in msg


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as err:
        load_dataset("imagenet")
    for name in DATASETS:
        assert name in str(err.value)


def test_bad_eval_split_and_train_samples():
    with pytest.raises(DataError, match="eval_split"):
        load_dataset("digits", eval_split="train")
    with pytest.raises(DataError, match="train_samples"):
        load_dataset("digits", train_samples=0)
    with pytest.raises(DataError, match="train_samples"):
        load_dataset("digits", train_samples=10**6)


def test_download_failure_is_one_line(tmp_path, monkeypatch):
    import torchvision.datasets

    class Offline:
        def __init__(self, root, train=True, download=False):
            raise RuntimeError(
                "Error downloading train-images-idx3-ubyte.gz:\nTried mirrors, all failed"
            )

    monkeypatch.setattr(torchvision.datasets, "MNIST", Offline)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=str(tmp_path), download=True)
    assert "\n" not in str(err.value) and "download" in str(err.value)


def test_download_fetches_with_torchvision_then_reads_ours(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    class FakeMNIST:  # writes the files where torchvision would, as a real download does
        def __init__(self, root, train=True, download=False):
            calls.append((root, download))
            write_idx_set(tmp_path / "MNIST" / "raw", gz=True)

    monkeypatch.setattr(torchvision.datasets, "MNIST", FakeMNIST)
    ds = load_dataset("mnist", data_dir=str(tmp_path), download=True)
    assert calls == [(str(tmp_path), True)] and ds.x_train.shape == (40, 1, 28, 28)
    load_dataset("mnist", data_dir=str(tmp_path), download=True)
    assert len(calls) == 1  # files present: no second download


# ----------------------------------------------------------------------------- splits


def test_digits_shapes_split_and_stratification():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1437, 1, 8, 8) and ds.x_eval.shape == (360, 1, 8, 8)
    assert ds.num_classes == 10 and ds.input_shape == (1, 8, 8)
    # Normalized with training-split statistics.
    assert abs(ds.x_train.mean().item()) < 1e-4 and ds.x_train.std().item() == pytest.approx(
        1.0, abs=1e-3
    )
    # Stratified: every class is within one sample of 20% of its total in the test part.
    train_counts = np.bincount(ds.y_train.numpy(), minlength=10)
    test_counts = np.bincount(ds.y_eval.numpy(), minlength=10)
    assert np.all(np.abs(test_counts - 0.2 * (train_counts + test_counts)) <= 1)


def test_digits_split_ignores_global_randomness():
    torch.manual_seed(1)
    np.random.seed(1)
    a = load_dataset("digits")
    torch.manual_seed(2)
    np.random.seed(2)
    b = load_dataset("digits")
    assert torch.equal(a.x_eval, b.x_eval) and torch.equal(a.y_eval, b.y_eval)
    assert torch.equal(a.x_train, b.x_train)


def train_ids(x):
    """Recover the training index stored in pixel [0, 0] of each MNIST test image."""
    return torch.round((x[:, 0, 0, 0] * MNIST_STD + MNIST_MEAN) * 255).long().tolist()


def test_val_split_sizes_disjoint_and_fixed(tmp_path):
    write_idx_set(tmp_path, n_train=40)
    np.random.seed(5)
    torch.manual_seed(5)
    ds = load_dataset("mnist", data_dir=str(tmp_path), eval_split="val")
    assert ds.eval_split == "val"
    assert len(ds.y_train) == 34 and len(ds.y_eval) == 6  # 85/15 of 40
    tr, ev = train_ids(ds.x_train), train_ids(ds.x_eval)
    assert not set(tr) & set(ev) and sorted(tr + ev) == list(
        range(40)
    )  # eval drawn from train only
    np.random.seed(6)
    torch.manual_seed(6)
    again = load_dataset("mnist", data_dir=str(tmp_path), eval_split="val")
    assert train_ids(again.x_eval) == ev


def test_val_split_digits_sizes():
    ds = load_dataset("digits", eval_split="val")
    n_val = round(1437 * 0.15)
    assert len(ds.y_eval) == n_val and len(ds.y_train) == 1437 - n_val


def test_train_samples_keeps_first_n(tmp_path):
    x_train, y_train, _, _ = write_idx_set(tmp_path, n_train=40)
    ds = load_dataset("mnist", data_dir=str(tmp_path), train_samples=9)
    assert train_ids(ds.x_train) == list(range(9)) and ds.y_train.tolist() == y_train[:9].tolist()
    assert len(ds.y_eval) == 6  # eval untouched
    full_val = load_dataset("mnist", data_dir=str(tmp_path), eval_split="val")
    val = load_dataset("mnist", data_dir=str(tmp_path), eval_split="val", train_samples=5)
    assert train_ids(val.x_train) == train_ids(full_val.x_train)[:5]
    assert train_ids(val.x_eval) == train_ids(full_val.x_eval)


def test_synthetic_shapes_and_determinism():
    a = load_dataset(
        "synthetic", synthetic_shape=(2, 5, 7), synthetic_classes=4, synthetic_sizes=(30, 8)
    )
    b = load_dataset(
        "synthetic", synthetic_shape=(2, 5, 7), synthetic_classes=4, synthetic_sizes=(30, 8)
    )
    assert (
        a.x_train.shape == (30, 2, 5, 7) and a.x_eval.shape == (8, 2, 5, 7) and a.num_classes == 4
    )
    assert a.x_train.dtype == torch.float32 and a.y_train.dtype == torch.int64
    assert int(a.y_train.min()) >= 0 and int(a.y_train.max()) < 4
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_eval, b.y_eval)


# ----------------------------------------------------------------------------- batches


@pytest.mark.parametrize("n,batch_size", [(10, 3), (12, 4), (5, 8), (1, 1)])
def test_iterate_batches_covers_every_index_once(n, batch_size):
    batches = list(iterate_batches(n, batch_size, torch.Generator().manual_seed(0), "cpu"))
    sizes = [len(b) for b in batches]
    assert all(s == batch_size for s in sizes[:-1]) and 1 <= sizes[-1] <= batch_size
    assert torch.cat(batches).sort().values.tolist() == list(range(n))
    assert all(b.dtype == torch.int64 and b.device.type == "cpu" for b in batches)


def test_iterate_batches_reproducible_and_seed_dependent():
    a = torch.cat(list(iterate_batches(100, 7, torch.Generator().manual_seed(3), "cpu")))
    b = torch.cat(list(iterate_batches(100, 7, torch.Generator().manual_seed(3), "cpu")))
    c = torch.cat(list(iterate_batches(100, 7, torch.Generator().manual_seed(4), "cpu")))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # Successive epochs from one generator differ (the generator advances).
    g = torch.Generator().manual_seed(3)
    e1, e2 = (torch.cat(list(iterate_batches(100, 7, g, "cpu"))) for _ in range(2))
    assert torch.equal(e1, a) and not torch.equal(e1, e2)
