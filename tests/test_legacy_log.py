"""Tests for mltools.legacy.log_2019, the parser of 2019-code text logs.

The fixture is written here by hand (it is not a real log); every number the
tests check is one the fixture wrote.
"""

import random

import pytest

from mltools.legacy.log_2019 import LegacyEpoch, is_legacy_log, parse_legacy_log

LIN = "Linear(in_features=3072, out_features=800, bias=True)"
TS = "2019-05-03 14:02:11,123 -- "
TAG = "[DMOD] INFO. "

# One entry per physical line; the comment is its 1-based line number.
FIXTURE_LINES = [
    TAG + "Loading CIFAR-10 and building the model",  # 1 preamble
    TS + "EPOCH 1/3, last epoch processed in 12.3s:",  # 2
    TS + f"0_{LIN} -- mean:0.0018, std:0.0427",  # 3
    TS + "1_Tanh() -- mean:0.4657, std:0.0679",  # 4
    TS + "Training loss: 1.2345 (top-1:45.67%) -- Validation loss: 1.3456 (top-1:44.00%).",  # 5
    " 12%|#2        | 47/391 [00:01<00:09]\r 56%|#####6    | 219/391 [00:05<00:04]"
    "\r100%|##########| 391/391 [00:09<00:00]",  # 6 progress only
    "\x1b[1;34m[DMOD] INFO.\x1b[0m \x1b[1mEPOCH\x1b[0m 2/3, last epoch processed in 11.9s:",  # 7
    TAG + f"0_{LIN} -- mean:\x1b[32m0.0021\x1b[0m, std:0.0400",  # 8
    TAG + "1_Tanh() -- mean:0.4702, std:0.0655",  # 9
    "@@#%!! ~~ scrambled ~~ &&",  # 10 garbage
    TAG + "Training loss: 1.1000 (top-1:50.25%) -- Validation loss: 1.2000 (top-1:48.50%).",  # 11
    "EPOCH 3/3, last epoch processed in 10.0s:",  # 12
    f"0_{LIN} -- mean:0.0030, std:0.0410",  # 13
    "1_Tanh() -- mean:0.4800, std:0.0600",  # 14 (no loss line)
    "2019-05-04 09:00:00,000 -- EPOCH 1/3, last epoch processed in 13.5s:",  # 15 run 2
    f"0_{LIN} -- mean:0.0010, std:0.0500",  # 16
    "1_Tanh() -- mean:0.4000, std:0.0700",  # 17
    "  3%|3         | 12/391\rTraining loss: 2.0000 (top-1:30.00%) -- "
    "Validation loss: 2.1000 (top-1:29.00%).",  # 18 \r line
    "\x00\x00\xff\xfe\x07\x00",  # 19 binary junk
    "\x1b[32mEPOCH 2/3, last epoch processed in 12.0s:\x1b[0m",  # 20
    f"0_{LIN} -- mean:0.0011, std:abc",  # 21 bad number
    "1_Tanh() -- mean:0.4100, std:0.0710",  # 22
    "Training loss: 1.9000 (top-1:33.3",  # 23 cut, no newline
]
FIXTURE = "\n".join(FIXTURE_LINES)  # no final newline: the last line is truncated


@pytest.fixture(scope="module")
def parsed():
    return parse_legacy_log(FIXTURE, source="old.log")


def _warning_lines(warnings):
    return [int(w.split(":")[1]) for w in warnings]


def test_runs_and_epochs(parsed):
    runs, _ = parsed
    assert [[e.epoch for e in run] for run in runs] == [[1, 2, 3], [1, 2]]
    assert all(e.epochs == 3 for run in runs for e in run)


def test_first_run_values(parsed):
    runs, _ = parsed
    e1, e2, e3 = runs[0]
    assert (e1.time_s, e1.train_loss, e1.train_top1, e1.test_loss, e1.test_top1) == (
        12.3,
        1.2345,
        45.67,
        1.3456,
        44.00,
    )
    assert e1.modules == [
        {"index": 0, "name": LIN, "mean": 0.0018, "std": 0.0427},
        {"index": 1, "name": "Tanh()", "mean": 0.4657, "std": 0.0679},
    ]
    # Tag, ANSI codes (also inside a number and inside the EPOCH keyword).
    assert (e2.time_s, e2.train_loss, e2.train_top1, e2.test_loss, e2.test_top1) == (
        11.9,
        1.1000,
        50.25,
        1.2000,
        48.50,
    )
    assert e2.modules == [
        {"index": 0, "name": LIN, "mean": 0.0021, "std": 0.0400},
        {"index": 1, "name": "Tanh()", "mean": 0.4702, "std": 0.0655},
    ]
    # Epoch without a loss line: modules kept, losses None.
    assert e3.time_s == 10.0
    assert (e3.train_loss, e3.train_top1, e3.test_loss, e3.test_top1) == (None,) * 4
    assert [(m["mean"], m["std"]) for m in e3.modules] == [(0.0030, 0.0410), (0.4800, 0.0600)]


def test_second_run_values(parsed):
    runs, _ = parsed
    e1, e2 = runs[1]
    # The loss line came after a progress bar and a \r.
    assert (e1.time_s, e1.train_loss, e1.train_top1, e1.test_loss, e1.test_top1) == (
        13.5,
        2.0,
        30.0,
        2.1,
        29.0,
    )
    assert [(m["mean"], m["std"]) for m in e1.modules] == [(0.0010, 0.0500), (0.4000, 0.0700)]
    # Unparseable std -> None; truncated tail keeps only the complete number.
    assert e2.time_s == 12.0
    assert e2.modules == [
        {"index": 0, "name": LIN, "mean": 0.0011, "std": None},
        {"index": 1, "name": "Tanh()", "mean": 0.4100, "std": 0.0710},
    ]
    assert (e2.train_loss, e2.train_top1, e2.test_loss, e2.test_top1) == (1.9, None, None, None)


def test_warnings_name_the_right_lines(parsed):
    _, warnings = parsed
    assert all(w.startswith("old.log:") for w in warnings)
    assert _warning_lines(warnings) == [10, 12, 19, 21, 23]
    by_line = dict(zip(_warning_lines(warnings), warnings))
    assert "unrecognised line" in by_line[10]
    assert "no loss line" in by_line[12]
    assert "binary junk" in by_line[19]
    assert "std" in by_line[21] and "'abc'" in by_line[21]
    assert "incomplete loss line" in by_line[23]
    # The progress-bar line, the \r line and the preamble raise nothing.
    assert not {1, 6, 18} & set(by_line)


def test_to_dict(parsed):
    runs, _ = parsed
    d = runs[0][0].to_dict()
    assert d == {
        "epoch": 1,
        "epochs": 3,
        "time_s": 12.3,
        "train_loss": 1.2345,
        "train_top1": 45.67,
        "test_loss": 1.3456,
        "test_top1": 44.0,
        "modules": [
            {"index": 0, "name": LIN, "mean": 0.0018, "std": 0.0427},
            {"index": 1, "name": "Tanh()", "mean": 0.4657, "std": 0.0679},
        ],
    }
    d["modules"][0]["mean"] = 99.0  # a copy: the epoch is untouched
    assert runs[0][0].modules[0]["mean"] == 0.0018


def test_is_legacy_log():
    assert is_legacy_log(FIXTURE)
    ours = "epoch 3 | train loss 0.1 | train acc 97.0 | test loss 0.2 | test acc 95.1\n"
    assert not is_legacy_log(ours)
    assert not is_legacy_log("EPOCH 1/3\nno losses here\n")
    assert not is_legacy_log("")


def test_new_run_when_total_changes_and_missing_module_lines():
    text = "\r\n".join(
        [  # CRLF endings
            "EPOCH 1/5, last epoch processed in 850ms:",
            "0_Linear() -- mean:0.1, std:0.2",
            "1_Tanh() -- mean:0.3, std:0.4",
            "Training loss: 1 (top-1:10%) -- Validation loss: 2 (top-1:20%).",
            "EPOCH 2/5, last epoch processed in 0:01:02.5:",
            "1_Tanh() -- mean:0.5, std:0.6",
            "Training loss: nan (top-1:1.0.0%) -- Validation loss: 3 (top-1:30%).",
            "EPOCH 2/8",
            "Training loss: 4 (top-1:40%) -- Validation loss: 5 (top-1:50%).",
            "",
        ]
    )
    runs, warnings = parse_legacy_log(text, source="x")
    assert [[(e.epoch, e.epochs) for e in run] for run in runs] == [[(1, 5), (2, 5)], [(2, 8)]]
    a, b = runs[0]
    assert a.time_s == pytest.approx(0.85) and b.time_s == 62.5
    assert (a.train_loss, a.train_top1, a.test_loss, a.test_top1) == (1.0, 10.0, 2.0, 20.0)
    assert b.train_loss != b.train_loss  # nan is a real value (diverged run)
    assert b.train_top1 is None and b.test_top1 == 30.0
    assert runs[1][0].time_s is None and runs[1][0].modules == []
    assert warnings == [
        "x:5: epoch 2 has 1 of 2 module lines",
        "x:7: cannot parse training top-1 '1.0.0'",
    ]


def test_damaged_input_never_crashes():
    rng = random.Random(0)
    pieces = FIXTURE_LINES + [
        "EPOCH",
        "EPOCH 99999999999999999999/1",
        "mean:, std:",
        "Validation loss: (top-1:%)",
        "\x1b[",
        "7_ -- mean:1, std:2",
    ]
    for _ in range(200):
        lines = [rng.choice(pieces) for _ in range(rng.randint(0, 30))]
        text = "\n".join(lines)
        cut = rng.randint(0, len(text))
        junk = "".join(chr(rng.randint(0, 0x2FF)) for _ in range(rng.randint(0, 20)))
        for sample in (text[:cut], text[:cut] + junk + text[cut:]):
            runs, warnings = parse_legacy_log(sample)
            assert all(isinstance(e, LegacyEpoch) for run in runs for e in run)
            assert all(isinstance(w, str) and w.startswith("<log>:") for w in warnings)
    assert parse_legacy_log("") == ([], [])


# -- the 2019 code's own progress and set-up lines ----------------------------------------------
BOLD, UNDERLINE, RESET = "\x1b[1m", "\x1b[4m", "\x1b[0m"


def logged(message: str, stamp: str = "2019-05-03 14:02:11") -> str:
    """A line as the 2019 logger wrote it to its file: timestamp, ` -- `, and the message with
    its <b>/<u> markup turned into ANSI codes (its raw-message code kept them)."""
    for tag, code in (("b", BOLD), ("u", UNDERLINE)):
        message = message.replace(f"<{tag}>", code).replace(f"</{tag}>", RESET)
    return f"{stamp} -- {message}"


def file_log_2019(seed: int, epochs: int, batches: int = 390) -> list[str]:
    """One run of the 2019 best_practices.py as its log file holds it. Epoch e has train top-1
    10*e + seed; its module lines are those of an FC network."""
    lines = [
        logged(m)
        for m in (
            f"Will be writing a log of all messages in file /data/logs/log_3_test_DFA_s{seed}.txt.",
            "<b><u>Establishing Baselines for Direct Feedback Alignment</u></b>",
            "<b>Section 3 -- Establishing Best Practices for DFA</b>",
            "Setting-up processing back-end and seeds...",
            f"Using GPU 0 with seed {seed}.",
            f"Seeding with <b>{seed}</b>.",
            "Preparing data for dataset <b>CIFAR-10</b> with batch size 128...",
            "Creating model...",
            "Using a <b>fully-connected</b> architecture.",
            "Will be using <b>DFA</b> for training!",
            f"Training with DFA initialized by STD for {epochs} epochs on dataset CIFAR-10 with a "
            "batch size of 128:",
            "Model: <dfatools.models.DFAClassifier object at 0x7f3a2c1e5f98>",
        )
    ]
    for e in range(1, epochs + 1):
        took = "" if e == 1 else ", last epoch processed in 10.25s"
        lines.append(logged(f"   EPOCH {e}/{epochs}{took}:"))
        lines.append(logged(f"       Batch 0/{batches} (loaded in 0s)"))
        lines += [
            logged(
                f"       Batch {i}/{batches} (loaded in 0.0126s, last batch forward in "
                "0.0011s, and backward in 0.0021s)"
            )
            for i in range(1, batches)
        ]
        lines += [
            logged(f"{i}_{name} -- mean:{0.1 * e + i / 100:.4f}, std:0.0500")
            for i, name in enumerate(
                [LIN, "Tanh()", "Linear(in_features=800, out_features=800, bias=True)"]
            )
        ]
        lines.append(
            logged(
                f"   Training loss: {2.0 / e} (top-1:{10 * e + seed:.1f}%) -- "
                f"Validation loss: {2.5 / e} (top-1:{9 * e + seed:.1f}%)."
            )
        )
        if e % 5 == 0:
            lines.append(logged(f"Checkpoint! saving model state to /data/state_s{seed}.pt..."))
    lines += [
        logged(m)
        for m in (
            f"Final validation with DFA initialized by STD for {epochs} epochs on dataset CIFAR-10 "
            "with a batch size of 128:",
            f"Finishing up: saving training log to /data/training_log_s{seed}.tl...",
            f"Finishing up: saving model state to /data/state_s{seed}.pt...",
        )
    ]
    return lines


def test_genuine_2019_file_log_parses_without_a_warning():
    text = "\n".join(file_log_2019(0, 5) + file_log_2019(1, 2)) + "\n"
    runs, warnings = parse_legacy_log(text, "log.txt")
    assert warnings == []
    assert [[e.epoch for e in run] for run in runs] == [[1, 2, 3, 4, 5], [1, 2]]
    assert [e.train_top1 for e in runs[0]] == [10.0, 20.0, 30.0, 40.0, 50.0]
    assert [e.test_top1 for e in runs[1]] == [10.0, 19.0]
    assert runs[0][0].time_s is None and runs[0][1].time_s == 10.25
    assert [m["mean"] for m in runs[1][1].modules] == [0.2, 0.21, 0.22]


def test_known_lines_change_neither_results_nor_warnings():
    """The fixture with the 2019 code's progress lines in every epoch block (console style:
    `[TAG] INFO.` headers, and file style: timestamps) parses as without them."""
    known = [
        TAG + "       Batch 0/390 (loaded in 0s)",
        "2019-05-03 14:02:11,123 --        Batch 17/390 (loaded in 0.0126s)",
        TAG + "Checkpoint! saving model state to /x/state.pt...",
        "\x1b[36m[MODL] INFO.\x1b[0m        Batch 18/390 (loaded in 0.0100s, last batch forward "
        "in 0.0011s, and backward in 0.0021s)",
    ]
    lines, numbers = [], {}
    for number, line in enumerate(FIXTURE_LINES, 1):
        lines.append(line)
        numbers[len(lines)] = number
        if "EPOCH" in line and number != len(FIXTURE_LINES):
            lines += known
    runs, warnings = parse_legacy_log("\n".join(lines), source="old.log")
    expected_runs, expected_warnings = parse_legacy_log(FIXTURE, source="old.log")
    assert runs == expected_runs
    renumbered = [f"old.log:{numbers[int(w.split(':')[1])]}:{w.split(':', 2)[2]}" for w in warnings]
    assert renumbered == expected_warnings
