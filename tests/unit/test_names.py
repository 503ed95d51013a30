"""Resource names of the core (aigc_gateway.names): one rule for every service and the CLI."""
from __future__ import annotations

import pytest

from aigc_gateway import names
from aigc_gateway.ctl import names as ctl_names
from aigc_gateway.ctl.exitcodes import Failure
from aigc_gateway.errors import InvalidArgument
from aigc_gateway.names import InstanceRef, TemplateRef


def test_names_parse_and_print() -> None:
    ref = names.parse_instance("namespaces/games/templates/sd-cpu/instances/12")
    assert ref == InstanceRef("games", "sd-cpu", 12)
    assert ref.name == "namespaces/games/templates/sd-cpu/instances/12" and ref.game_server == "sd-cpu-12"
    assert ref.template_ref == TemplateRef("games", "sd-cpu") and ref.template_ref.key == "games/sd-cpu"
    assert names.parse_template("namespaces/games/templates/sd-cpu") == TemplateRef("games", "sd-cpu")
    assert names.parse_list_parent("namespaces/-/templates/-") == (None, None)
    assert names.parse_list_parent("namespaces/games/templates/-") == ("games", None)
    assert names.parse_namespace_parent("namespaces/-") == "-"
    assert names.parse_namespace_parent("namespaces/games", allow_all=False) == "games"


@pytest.mark.parametrize("bad", [
    "", "namespaces/games/templates/sd-cpu", "namespaces/games/templates/sd-cpu/instances/",
    "namespaces/games/templates/sd-cpu/instances/-1", "namespaces/games/templates/sd-cpu/instances/01",
    "namespaces/games/templates/sd-cpu/instances/1x", "namespaces/Games/templates/sd-cpu/instances/1",
    "namespaces/games/templates/sd_cpu/instances/1", "namespaces/games/tpl/sd-cpu/instances/1",
    "namespaces/games/templates/sd-cpu/instances/1/x", "namespaces/games/templates/sd-cpu/instances/9999999999",
    "namespaces/games/templates/-/instances/1",
])
def test_bad_instance_names_are_invalid_argument_on_the_field(bad: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        names.parse_instance(bad, "name")
    assert [v.field for v in info.value.violations] == ["name"]


# A namespace-valid DNS label that the template service refuses to publish as a template name.
REFUSED = ["1sd", "sd-", "a" * (names.GSS_NAME_MAX + 1), "sd.cpu", "Sd"]


@pytest.mark.parametrize("template", REFUSED)
def test_a_template_name_the_template_rules_refuse_is_refused_by_every_parser(template: str) -> None:
    assert not names.is_template_name(template)
    for parse, value in ((names.parse_template, f"namespaces/games/templates/{template}"),
                         (names.parse_instance, f"namespaces/games/templates/{template}/instances/0"),
                         (names.parse_list_parent, f"namespaces/games/templates/{template}")):
        with pytest.raises(InvalidArgument) as info:
            parse(value, "parent")
        assert [v.field for v in info.value.violations] == ["parent"]
        assert "not a valid template name" in info.value.violations[0].description
    with pytest.raises(Failure):
        ctl_names.template_name(template, "games")
    with pytest.raises(Failure):
        ctl_names.instance_name(f"{template}/0", "games")


def test_the_template_rules_and_the_name_parsers_agree() -> None:
    from aigc_gateway.services.template import rules
    from aigc_gateway.services.template.policy import Policy

    def refused_by_rules(name: str) -> bool:
        report = rules.check({"apiVersion": "game.kruise.io/v1alpha1", "kind": "GameServerSet",
                              "metadata": {"name": name, "namespace": "games"}, "spec": {}},
                             Policy(), rules.Mode.EXISTING)
        return any(v.field == "metadata.name" for v in report.violations)

    for name in [*REFUSED, "sd-cpu", "a" * names.GSS_NAME_MAX, "x"]:
        assert refused_by_rules(name) == (not names.is_template_name(name)), name


def test_namespace_is_a_dns_label() -> None:
    assert names.is_namespace("team-a") and names.is_namespace("1team")
    for bad in ("Team", "-a", "a" * 64, "a_b", ""):
        assert not names.is_namespace(bad)
        with pytest.raises(InvalidArgument):
            names.parse_template(f"namespaces/{bad}/templates/sd-cpu")
