"""The original custom-data format and the pure change logic (no servers)."""
from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from aigc_gateway.services.usersync.entries import (
    NULL,
    Entry,
    Malformed,
    apply_changes,
    collapse,
    describe_change,
    diff,
    effective,
    entry_value,
    parse_entry,
)


def test_parse_entry_classifies_every_kind_of_item() -> None:
    assert parse_entry("my-ns-sd-cpu", {"Name": "sd-cpu", "Namespace": "my-ns", "ID": "3"}) == \
        Entry("my-ns-sd-cpu", "my-ns", "sd-cpu", 3)
    assert parse_entry("a-b", {"Name": "b", "Namespace": "a", "ID": 4}) == Entry("a-b", "a", "b", 4)
    assert parse_entry("a-b", None) == NULL
    assert parse_entry("theme", "dark") is None and parse_entry("prefs", {"color": "red"}) is None
    wrong_key = parse_entry("a-c", {"Name": "b", "Namespace": "a", "ID": "1"})
    assert isinstance(wrong_key, Malformed) and "expected 'a-b'" in wrong_key.reason
    for bad_id in ("-1", "x", "", True, 1.5, None):
        assert isinstance(parse_entry("a-b", {"Name": "b", "Namespace": "a", "ID": bad_id}), Malformed)
    assert isinstance(parse_entry("a-b", {"Name": "", "Namespace": "a", "ID": "1"}), Malformed)


def test_collapse_keeps_the_last_change_per_key() -> None:
    rows = [("ns", "a", 1), ("ns", "b", 2), ("ns", "a", None), ("ns", "c", 5), ("ns", "a", 7), ("ns", "c", None)]
    assert collapse(rows) == {"ns-b": entry_value("ns", "b", 2), "ns-a": entry_value("ns", "a", 7), "ns-c": None}


def test_removal_deletes_the_key_and_leaves_the_rest() -> None:
    current = {"lang": "en", "ns-a": entry_value("ns", "a", 1), "ns-b": None}
    after = apply_changes(current, {"ns-a": None, "ns-b": None, "ns-c": entry_value("ns", "c", 0)})
    assert after == {"lang": "en", "ns-c": entry_value("ns", "c", 0)}
    assert current["ns-a"] == entry_value("ns", "a", 1)  # the input is not modified
    assert effective(current, {"ns-a": entry_value("ns", "a", 1), "ns-x": None, "ns-b": None}) == {"ns-b": None}


def test_diff_removes_only_entries_of_managed_templates() -> None:
    current = {"ns-a": entry_value("ns", "a", 2), "ns-old": entry_value("ns", "old", 1),
               "legacy-x": entry_value("legacy", "x", 0), "ns-gone": None, "lang": "en"}
    desired = {"ns-a": entry_value("ns", "a", 3), "ns-new": entry_value("ns", "new", 0)}
    changes = diff(current, desired, managed={("ns", "a"), ("ns", "old"), ("ns", "gone"), ("ns", "new")})
    assert changes == {"ns-a": entry_value("ns", "a", 3), "ns-new": entry_value("ns", "new", 0), "ns-old": None}
    assert diff(apply_changes(current, changes), desired, {("ns", "old")}) == {}
    assert describe_change("ns-old", None, current["ns-old"]) == ("ns", "old", -1)
    assert describe_change("ns-a", desired["ns-a"], None) == ("ns", "a", 3)


keys = st.sampled_from(["t0", "t1", "t2"])
ops = st.lists(st.tuples(keys, st.one_of(st.none(), st.integers(0, 50))), max_size=30)


@given(ops, ops)
def test_collapsed_batches_equal_applying_rows_one_by_one(first: list, second: list) -> None:
    """Delivering in batches (each collapsed) leaves what row-by-row delivery in order leaves."""
    rows = [("ns", t, i) for t, i in first + second]
    one_by_one: dict = {"other": 1}
    for row in rows:
        one_by_one = apply_changes(one_by_one, collapse([row]))
    batched = apply_changes(apply_changes({"other": 1}, collapse([("ns", t, i) for t, i in first])),
                            collapse([("ns", t, i) for t, i in second]))
    assert batched == one_by_one
