"""Property-based tests: every reader of run folders, logs and datasets, fed random truncations,
byte flips, inserted garbage and plain garbage, either parses or raises the project's one-line
error (runlog readers: warnings, never an exception; mltools.data.datasets: DataError; a
recovered 2019 log: UsageError). Never another exception, and never a hang (SIGALRM guard per
example)."""

import contextlib
import gzip
import pickle
import signal
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from mltools.data.datasets import (
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    DataError,
    read_cifar_pickle,
    read_idx,
)
from mltools.errors import UsageError
from mltools.legacy.bottleneck_recovered import read_recovered
from mltools.legacy.log_2019 import LegacyEpoch, parse_legacy_log
from mltools.legacy.retrieval import parse_run_log
from mltools.runs import runlog

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
SECONDS = 5  # per example; the readers take milliseconds on these inputs


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so that no reader's `except Exception` hides it."""


@contextlib.contextmanager
def no_hang(seconds: float = SECONDS):
    def alarm(signum, frame):
        raise Hang(f"a reader ran for more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for position, mask in flips:
        out[position % len(out)] ^= mask
    return bytes(out)


def damaged(base: bytes) -> st.SearchStrategy[bytes]:
    """``base`` truncated, with bytes flipped, with garbage inserted, or garbage alone."""
    return st.one_of(
        st.integers(0, len(base)).map(lambda n: base[:n]),
        st.lists(st.tuples(st.integers(0, 2**20), st.integers(1, 255)), min_size=1, max_size=8).map(
            lambda flips: flip(base, flips)
        ),
        st.tuples(st.integers(0, len(base)), st.binary(min_size=1, max_size=64)).map(
            lambda cut: base[: cut[0]] + cut[1] + base[cut[0] :]
        ),
        st.binary(max_size=1024),
    )


def one_line(messages) -> bool:
    return all(isinstance(m, str) and "\n" not in m for m in messages)


# -- valid files, written by the project's own writers -----------------------------------------
RECORDS = [
    {
        "epoch": e,
        "train_loss": 2.0 / (e + 1),
        "train_top1": 10.0 * e,
        "eval_loss": 1.5,
        "eval_top1": 9.5 * e,
        "time_s": 0.25,
        "alignment": [
            {
                "point": p,
                "name": f"h{p + 1} (Linear)",
                "cos_mean": 0.1 * p,
                "cos_std": 0.01,
                "angle_deg": 80.0,
                "weight_cos": None if p == 0 else 0.5,
            }
            for p in range(2)
        ],
    }
    for e in range(3)
]


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> dict[str, bytes]:
    """The bytes of a valid config.json, metrics.jsonl and log.txt."""
    folder = tmp_path_factory.mktemp("run")
    runlog.write_config(folder, {"experiment": "fc-tanh", "seed": 0, "epochs": 2, "status": "done"})
    runlog.write_metrics(folder / runlog.METRICS, RECORDS)
    log = runlog.RunLog(folder)
    log.write("start fc-tanh seed 0")
    for record in RECORDS:
        log.epoch(record, 2)
    return {
        name: (folder / name).read_bytes() for name in (runlog.CONFIG, runlog.METRICS, runlog.LOG)
    }


@given(data=st.data())
@FUZZ
def test_metrics_jsonl_reader(tmp_path, valid, data):
    path = tmp_path / runlog.METRICS
    path.write_bytes(data.draw(damaged(valid[runlog.METRICS])))
    with no_hang():
        records, warnings = runlog.read_json_lines(path)
    assert all(isinstance(r, dict) and isinstance(r["epoch"], int) for r in records)
    assert one_line(warnings) and all(w.startswith(str(path)) for w in warnings)


@given(data=st.data())
@FUZZ
def test_config_json_and_run_folder_readers(tmp_path, valid, data):
    for name in (runlog.CONFIG, runlog.METRICS, runlog.RECOVERED):
        base = valid[runlog.METRICS if name == runlog.RECOVERED else name]
        (tmp_path / name).write_bytes(data.draw(damaged(base), label=name))
    with no_hang():
        config, warnings = runlog.read_config(tmp_path)
        run = runlog.load_run(tmp_path)
    assert config is None or isinstance(config, dict)
    assert one_line(warnings) and one_line(run.warnings) and isinstance(run.status, object)
    assert all(isinstance(r.get("epoch"), int) for r in run.records)


@given(data=st.data())
@FUZZ
def test_log_txt_readers(valid, data):
    text = data.draw(
        st.one_of(
            damaged(valid[runlog.LOG]).map(lambda b: b.decode("utf-8", "replace")),
            st.text(max_size=512),
        )
    )
    with no_hang():
        parsed = [runlog.parse_log(text, "log.txt"), parse_run_log(text, "log.txt")]
    for records, warnings in parsed:
        assert all(
            isinstance(r["epoch"], int) and isinstance(r["alignment"], list) for r in records
        )
        assert one_line(warnings) and all(w.startswith("log.txt:") for w in warnings)


LEGACY = (
    "\n".join(
        [
            "2019-05-03 14:02:11 -- Seeding with \x1b[1m0\x1b[0m.",
            "2019-05-03 14:02:11 --    EPOCH 1/2:",
            "2019-05-03 14:02:11 --        Batch 1/390 (loaded in 0.0126s, "
            "last batch forward in 0.0011s, and backward in 0.0020s)",
            "2019-05-03 14:02:21 -- 0_Linear(in_features=3072, out_features=800, bias=True) "
            "-- mean:0.0018, std:0.0427",
            "2019-05-03 14:02:21 -- 1_Tanh() -- mean:0.4657, std:0.0679",
            "2019-05-03 14:02:21 --    Training loss: 1.2345 (top-1:45.7%) "
            "-- Validation loss: 1.3456 (top-1:44.0%).",
            "[MODL] INFO.    EPOCH 2/2, last epoch processed in 0:00:10.5:",
            "[MODL] INFO.        Batch 0/390 (loaded in 0s)\r"
            "[DMOD] INFO. 0_Linear() -- mean:0.1, std:0.2",
            "[MODL] INFO.    Training loss: 1.1 (top-1:50.0%) "
            "-- Validation loss: 1.2 (top-1:48.5%).",
        ]
    )
    + "\n"
)


@given(data=st.data())
@FUZZ
def test_2019_log_reader(data):
    text = data.draw(
        st.one_of(
            damaged(LEGACY.encode()).map(lambda b: b.decode("utf-8", "replace")),
            st.text(max_size=512),
        )
    )
    with no_hang():
        runs, warnings = parse_legacy_log(text, "old.log")
    assert all(isinstance(e, LegacyEpoch) for run in runs for e in run)
    assert one_line(warnings) and all(w.startswith("old.log:") for w in warnings)


def recovered_json() -> bytes:
    runs, _ = parse_legacy_log(LEGACY)
    return (
        repr([[e.to_dict() for e in run] for run in runs])
        .replace("'", '"')
        .replace("None", "null")
        .encode()
    )


@given(data=st.data())
@FUZZ
def test_recovered_2019_log_reader(tmp_path, data):
    path = tmp_path / "old.recovered.json"
    path.write_bytes(data.draw(damaged(recovered_json())))
    with no_hang():
        try:
            runs = read_recovered(path)
        except UsageError as err:
            assert one_line([str(err)])
            return
    assert all(isinstance(e["epoch"], int) for run in runs for e in run)


def idx_file(magic: int, dims: tuple[int, ...]) -> bytes:
    values = np.arange(int(np.prod(dims)), dtype=np.uint8)
    return struct.pack(f">I{len(dims)}I", magic, *dims) + values.tobytes()


@given(data=st.data(), kind=st.sampled_from(["images", "labels"]), gz=st.booleans())
@FUZZ
def test_idx_reader(tmp_path, data, kind, gz):
    magic, dims = (IDX_IMAGES_MAGIC, (3, 4, 5)) if kind == "images" else (IDX_LABELS_MAGIC, (7,))
    base = idx_file(magic, dims)
    # Damage the compressed stream itself for .gz, as a torn download would.
    raw = data.draw(damaged(gzip.compress(base) if gz else base))
    path = tmp_path / ("file.gz" if gz else "file")
    path.write_bytes(raw)
    with no_hang():
        try:
            array = read_idx(path, magic)
        except DataError as err:
            assert one_line([str(err)]) and str(path) in str(err)
            return
    assert array.dtype == np.uint8 and array.ndim == len(dims)


def cifar_batch(protocol: int, key_type) -> bytes:
    rows = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    return pickle.dumps(
        {
            key_type(b"data"): rows,
            key_type(b"labels"): [3, 7],
            key_type(b"filenames"): [b"a.png", b"b.png"],
        },
        protocol=protocol,
    )


@given(data=st.data(), protocol=st.sampled_from([2, 4, 5]), str_keys=st.booleans())
@FUZZ
def test_cifar_reader(tmp_path, data, protocol, str_keys):
    base = cifar_batch(protocol, bytes.decode if str_keys else bytes)
    path = tmp_path / "data_batch_1"
    path.write_bytes(data.draw(damaged(base)))
    with no_hang():
        try:
            x, y = read_cifar_pickle(path, "labels")
        except DataError as err:
            assert one_line([str(err)]) and str(path) in str(err)
            return
    assert x.dtype == np.uint8 and x.shape[1:] == (3, 32, 32) and y.shape == (x.shape[0],)


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a": ' * 100_000], ids=["lists", "objects"])
def test_json_nested_too_deeply_is_a_damaged_file(tmp_path, text):
    """json.loads raises RecursionError, not ValueError, on deep nesting: the readers must
    still report it as damage."""
    (tmp_path / runlog.CONFIG).write_text(text)
    (tmp_path / runlog.METRICS).write_text(text + "\n" + '{"epoch": 0}\n')
    config, warnings = runlog.read_config(tmp_path)
    assert config is None and "unreadable" in warnings[0]
    records, warnings = runlog.read_json_lines(tmp_path / runlog.METRICS)
    assert records == [{"epoch": 0}] and "damaged line" in warnings[0]
    (tmp_path / "old.recovered.json").write_text(text)
    with pytest.raises(UsageError, match="nested too deeply"):
        read_recovered(tmp_path / "old.recovered.json")


def test_overlong_lines_are_damage():
    """Lines far longer than any record (here with numbers past int()'s 4300-digit limit) are
    skipped with a warning naming them, by both log parsers."""
    digits = "9" * 5000
    records, warnings = runlog.parse_log(f"epoch {digits}/3 train_loss=1\n", "log.txt")
    assert records == [] and warnings == ["log.txt:1: damaged epoch line skipped (5021 characters)"]
    runs, warnings = parse_legacy_log(f"EPOCH {digits}/3:\n{digits}_Tanh() -- mean:1, std:2\n")
    assert runs == [] and len(warnings) == 2 and all("damaged record" in w for w in warnings)


# Pieces of both log formats; long lines of them are where a backtracking regex turns slow.
FRAGMENTS = [
    "EPOCH ",
    "epoch ",
    "1/2",
    "12",
    ".5",
    " ",
    "  ",
    "\t",
    " -- ",
    "--",
    "mean:",
    "std:",
    ", ",
    "0_Linear()",
    "_",
    "Training loss:",
    "Validation loss:",
    "(top-1:",
    "%)",
    ")",
    "[MODL] ",
    "INFO.",
    "2019-05-03 14:02:11",
    ",123",
    "Batch ",
    "(loaded in ",
    "s",
    "\x1b[",
    "1m",
    "\r",
    "=",
    '"',
    "\\",
    "align ",
    "point=",
    "0:00:",
    "x",
]


@given(
    lead=st.lists(st.sampled_from(FRAGMENTS), max_size=3),
    pieces=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=6),
    repeat=st.integers(10, 4000),
    head=st.sampled_from(["", "EPOCH 1/2\n", "epoch 1/2 "]),
)
@example(lead=["2019-05-03 14:02:11"], pieces=[" "], repeat=4000, head="EPOCH 1/2\n")
@settings(max_examples=100, deadline=None)
def test_long_lines_parse_in_linear_time(lead, pieces, repeat, head):
    """A line of a few format pieces, then up to thousands of repeats of others (up to a 100 kB
    line from a runaway print), inside an epoch block or not."""
    text = head + "".join(lead) + "".join(pieces) * repeat + "x\n"  # x: not stripped away
    with no_hang(SECONDS):
        parse_legacy_log(text)
        runlog.parse_log(text)
