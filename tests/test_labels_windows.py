import re

import numpy as np
import pytest

from conftest import REPORT
from ichprep.errors import LabelsError, UsageError, WindowSpecError
from ichprep.labels import SUBTYPES, TYPE_TABLE, UNLABELLED, inconsistent_any, read_labels, type_codes
from ichprep.windows import PRESETS, WINDOW_TABLE, Window, parse_windows, windows_from_list, windows_to_list


def _report_table_3_1() -> dict[int, tuple[int, ...]]:
    """Table 3.1 parsed from the reference report's own text (an independent reference)."""
    text = REPORT.read_text()
    rows = {}
    for m in re.finditer(r"^(\d{1,2})\t(\d+)\t([01])\t([01])\t([01])\t([01])\t([01])\t([01])$", text, re.M):
        rows[int(m.group(1))] = tuple(int(m.group(i)) for i in range(3, 9))
    return rows


def test_all_32_type_codes_match_report_table():
    table = _report_table_3_1()
    assert sorted(table) == list(range(1, 33))
    labels = np.array([table[t] for t in range(1, 33)], np.uint8)
    np.testing.assert_array_equal(type_codes(labels), np.arange(1, 33))
    assert TYPE_TABLE == table
    assert not inconsistent_any(labels).any()


def test_type_codes_unlabelled_and_hand_examples():
    labels = np.array([[0, 0, 0, 0, 1, 1], [1, 0, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0], [UNLABELLED] * 6], np.uint8)
    np.testing.assert_array_equal(type_codes(labels), [31, 20, 32, 0])
    assert inconsistent_any(np.array([[0, 1, 0, 0, 0, 0]], np.uint8))[0]


def _write(tmp_path, text):
    p = tmp_path / "labels.csv"
    p.write_text(text)
    return p


def _rows(sop, flags):
    return "".join(f"{sop}_{s},{f}\n" for s, f in zip(SUBTYPES, flags))


def test_read_labels_collapses_identical_duplicates(tmp_path):
    body = "ID,Label\n" + _rows("ID_a", [0, 1, 0, 0, 0, 1]) + _rows("ID_a", [0, 1, 0, 0, 0, 1]) + _rows("ID_b", [0] * 6)
    body += "".join(f"ID_c_{s},1\n" for s in SUBTYPES[:3])  # three of six subtypes: not labelled
    t = read_labels(_write(tmp_path, body))
    assert t.duplicate_rows == 6
    assert t.incomplete == ["ID_c"] and set(t.by_sop) == {"ID_a", "ID_b"}
    assert all(v.dtype == np.uint8 and v.shape == (6,) for v in t.by_sop.values())
    np.testing.assert_array_equal(t.by_sop["ID_a"], [0, 1, 0, 0, 0, 1])
    lab, missing = t.lookup(["ID_b", "ID_zzz", "ID_a"])
    assert missing == 1 and lab[1].tolist() == [UNLABELLED] * 6 and lab[2, 1] == 1


@pytest.mark.parametrize("body,match", [
    ("ID,Label\n" + _rows("ID_a", [0] * 6) + "ID_a_any,1\n", "conflicting duplicate for ID_a_any"),
    ("id,label\nID_a_any,1\n", "expected the header 'ID,Label'"),
    ("ID,Label\nID_a_any,2\n", "labels must be 0 or 1"),
    ("ID,Label\nID_a_bleed,1\n", "subtype one of"),
    ("", "empty"),
])
def test_read_labels_errors_name_the_problem(tmp_path, body, match):
    with pytest.raises(LabelsError, match=match):
        read_labels(_write(tmp_path, body))


def test_labels_error_is_a_value_error_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        read_labels(tmp_path / "nope.csv")


def test_presets_and_table_order():
    assert [w.name for w in PRESETS["rnn"]] == ["default", "brain", "subdural-min", "subdural-mid", "subdural-max",
                                               "tissue-min", "tissue-mid", "tissue-max", "bone", "grey-white"]
    assert [(w.center, w.width) for w in WINDOW_TABLE[1:]] == [
        (40, 80), (50, 130), (75, 215), (100, 300), (20, 350), (40, 375), (60, 400), (600, 2800), (32, 8)]
    assert PRESETS["cnn"] == (Window("full", "full"),)
    assert Window("brain", "fixed", 40, 80).bounds == (0.0, 80.0)  # c +- w/2, not the report's c +- c/2


def test_parse_window_specs():
    ws = parse_windows("brain:40/80, subdural:80/200,bone:600/2800")
    assert [(w.name, w.center, w.width) for w in ws] == [("brain", 40, 80), ("subdural", 80, 200), ("bone", 600, 2800)]
    assert parse_windows("bone,mine:default")[1].kind == "default"
    assert windows_from_list(windows_to_list(PRESETS["rnn"])) == PRESETS["rnn"]


@pytest.mark.parametrize("spec,match", [
    ("brain:40", "Malformed window"),
    ("brain:40/0", r"width in \[0.01"),
    ("nosuch", "Unknown window or preset"),
    ("a:1/2,a:3/4", "unique"),
    ("", "Expected a preset"),
    ("9x:1/2", "window name"),
])
def test_parse_window_errors(spec, match):
    with pytest.raises(WindowSpecError, match=match):
        parse_windows(spec)
    with pytest.raises(UsageError):
        parse_windows(spec)
