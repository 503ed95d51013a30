"""The OKG model of the core (aigc_gateway.okg): pure, tested without a cluster."""
from __future__ import annotations

import pytest

from aigc_gateway import okg
from aigc_gateway.okg import SlotState


def gss(namespace: str = "games", labels: dict | None = None) -> dict:
    return {"metadata": {"name": "sd-cpu", "namespace": namespace, "labels": labels or {}}}


# -- templates ---------------------------------------------------------------------------------------------

def test_a_template_is_in_a_configured_namespace_and_carries_every_configured_label() -> None:
    assert okg.is_template(gss(labels={"app": "aigc", "x": "y"}), [], {"app": "aigc"})
    assert okg.is_template(gss(), ["games"], {})
    assert not okg.is_template(gss(), ["other"], {})
    assert not okg.is_template(gss(labels={"app": "else"}), [], {"app": "aigc"})
    assert not okg.is_template(gss(labels={}), ["games"], {"app": "aigc"})
    assert okg.missing_labels({"app": "else"}, {"app": "aigc", "tier": "gpu"}) == {"app": "aigc", "tier": "gpu"}


def test_label_selector_is_sorted_and_empty_without_labels() -> None:
    assert okg.label_selector({"b": "2", "a": "1"}) == "a=1,b=2"
    assert okg.label_selector({}) == ""


# -- the reserve list ---------------------------------------------------------------------------------------

def test_reserve_list_reads_ints_ranges_and_numeric_strings() -> None:
    assert okg.parse_reserve([1, "4-7", "9", " 11 - 12 "]) == {1, 4, 5, 6, 7, 9, 11, 12}
    assert okg.parse_reserve(None) == frozenset()
    assert okg.parse_reserve(["3-3"]) == {3}


@pytest.mark.parametrize("bad", [[-1], ["7-5"], ["x"], [True], [1.5], ["1-"], [None], [{"a": 1}], ["-3"],
                                 ["١"]])
def test_reserve_list_refuses_what_is_not_an_id(bad: list) -> None:
    with pytest.raises(okg.ReserveListError):
        okg.parse_reserve(bad)


def test_reserve_range_width_is_capped_rather_than_expanded() -> None:
    widest = f"5-{5 + okg.MAX_RESERVE_RANGE}"
    assert len(okg.parse_reserve([widest])) == okg.MAX_RESERVE_RANGE + 1
    with pytest.raises(okg.ReserveListError, match="too large"):
        okg.parse_reserve([f"5-{6 + okg.MAX_RESERVE_RANGE}"])
    with pytest.raises(okg.ReserveListError, match="too large"):
        okg.parse_reserve(["0-999999999999"])


def test_reserve_list_is_written_as_sorted_ints_and_reads_back() -> None:
    written = okg.format_reserve([5, 1, 3, 1])
    assert written == [1, 3, 5]
    assert okg.parse_reserve(written) == {1, 3, 5}


# -- the live set -------------------------------------------------------------------------------------------

def test_live_ids_are_the_lowest_r_not_reserved() -> None:
    assert okg.live_ids(3, {1, 2}) == {0, 3, 4}
    assert okg.high_water(3, {1, 2}) == 5
    assert okg.holes(3, {1, 2}) == frozenset()


def test_holes_are_unreserved_ids_below_the_high_water_mark() -> None:
    assert okg.live_ids(1, {4}) == {0}
    assert okg.high_water(1, {4}) == 5
    assert okg.holes(1, {4}) == {1, 2, 3}
    assert okg.live_ids(0, ()) == frozenset() and okg.high_water(0, ()) == 0 and okg.holes(0, ()) == frozenset()


# -- GameServer names ---------------------------------------------------------------------------------------

def test_game_server_names_read_back_to_ids() -> None:
    assert okg.game_server_name("sd-cpu", 12) == "sd-cpu-12"
    assert okg.instance_id("sd-cpu-12") == 12
    assert okg.instance_id("sd-cpu-12", "sd-cpu") == 12
    assert okg.instance_id("sd-cpu-12", "sd") is None  # `sd-cpu-12` is not a GameServer of `sd`
    assert okg.instance_id("other-4", "cpu") is None
    assert okg.instance_id("sd-cpu-x") is None and okg.instance_id("12") is None and okg.instance_id("sd-²") is None
    assert okg.template_of("sd-cpu-12") == "sd-cpu" and okg.template_of("sd-cpu") is None


def test_instance_of_reads_the_owner_label_or_the_given_template() -> None:
    gs = {"metadata": {"name": "cpu-4", "namespace": "ns", "labels": {okg.OWNER_GSS_LABEL: "cpu"}}}
    assert okg.instance_of(gs) == ("ns", "cpu", 4)
    assert okg.instance_of({"metadata": {"name": "cpu-4", "namespace": "ns"}}) is None
    assert okg.instance_of({"metadata": {"name": "cpu-4", "namespace": "ns"}}, "cpu") == ("ns", "cpu", 4)
    assert okg.instance_of({"metadata": {"name": "other-4", "labels": {okg.OWNER_GSS_LABEL: "cpu"}}}) is None


def test_slot_states_are_the_table_values() -> None:
    assert [s.value for s in SlotState] == ["LIVE", "PAUSED", "RELEASING", "FREE"]
    assert okg.OWNED == (SlotState.LIVE, SlotState.PAUSED)
    assert SlotState.LIVE == "LIVE"  # compares equal to the column's string


def test_disk_names_read_back_to_ids() -> None:
    assert okg.claim_name("data", "sd-cpu", 3) == "data-sd-cpu-3"
    assert okg.claim_id("data-sd-cpu-3", "data", "sd-cpu") == 3
    assert okg.claim_id("data-x-sd-cpu-3", "data", "sd-cpu") is None  # another template's disk
    assert okg.claim_id("data-sd-cpu-3", "data", "cpu") is None
    assert okg.claim_id("data-sd-cpu-3", "", "sd-cpu") is None


def test_the_scale_write_keeps_the_version_read_and_drops_the_status() -> None:
    read = {"metadata": {"name": "sd", "resourceVersion": "7"}, "spec": {"replicas": 1, "reserveGameServerIds": ["2-3"],
                                                                       "other": True}, "status": {"replicas": 1}}
    body = okg.with_scale(read, 2, {5, 2, 3})
    assert body == {"metadata": {"name": "sd", "resourceVersion": "7"},
                    "spec": {"replicas": 2, "reserveGameServerIds": [2, 3, 5], "other": True}}
    assert read["spec"]["replicas"] == 1 and "status" in read  # the object read is left as it was


def test_an_ingress_pattern_gets_its_one_id_as_the_plugin_does() -> None:
    assert okg.with_id("instances<id>-sd.example.com", 7) == "instances7-sd.example.com"
    assert okg.with_id("/sd<id>(/|$)(.*)", 0) == "/sd0(/|$)(.*)"
    assert okg.with_id("sd.example.com", 3) == "sd.example.com"
    assert okg.with_id("<id>-<id>.example.com", 3) is None  # the plugin refuses it and makes no Ingress
