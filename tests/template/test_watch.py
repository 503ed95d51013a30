"""The watch cache's ordering rules, without a cluster: what this process wrote or saw absent is never
undone by a watch event or a list that carries an older revision; anything newer replaces it."""
from __future__ import annotations

from aigc_gateway.services.template.watch import TemplateCache

KEY = ("team-a", "sd")


def gss(version: int, uid: str = "u1", name: str = "sd") -> dict:
    return {"metadata": {"namespace": "team-a", "name": name, "uid": uid, "resourceVersion": str(version)}}


def cache() -> TemplateCache:
    async def no_cluster():  # never called: these tests feed the scope directly
        raise AssertionError("no cluster here")
    return TemplateCache(no_cluster, ["team-a"], "aigc.gateway.io/template=true")


def test_an_older_watch_event_does_not_undo_a_write() -> None:
    c = cache()
    scope = c.scopes["team-a"]
    scope.replace([gss(10)], 10)
    c.note(gss(20))
    scope.apply(KEY, gss(15), 15)  # the controller's status update, written before our update
    assert scope.items[KEY]["metadata"]["resourceVersion"] == "20"
    scope.apply(KEY, gss(21), 21)
    assert scope.items[KEY]["metadata"]["resourceVersion"] == "21"


def test_a_list_older_than_a_write_keeps_the_write_and_a_newer_one_wins() -> None:
    c = cache()
    scope = c.scopes["team-a"]
    c.note(gss(30))
    scope.replace([], 25)  # a list that was in flight before the create
    assert scope.items[KEY]["metadata"]["resourceVersion"] == "30"
    scope.replace([gss(31, name="other")], 40)  # the create was deleted meanwhile: the list is the truth
    assert list(scope.items) == [("team-a", "other")]


def test_an_absence_is_not_undone_by_older_events_but_a_successor_appears() -> None:
    c = cache()
    scope = c.scopes["team-a"]
    scope.replace([gss(10)], 10)
    c.absent("team-a", "sd", "50")  # the delete cascade saw it gone at revision 50
    assert KEY not in scope.items
    scope.apply(KEY, gss(45), 45)  # deletionTimestamp set, delivered late
    assert KEY not in scope.items
    scope.apply(KEY, None, 48)  # its DELETED event
    scope.apply(KEY, gss(60, uid="u2"), 60)  # a same-named successor
    assert scope.items[KEY]["metadata"]["uid"] == "u2"
