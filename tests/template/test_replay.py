"""The request digest annotation (replay.py, issue 20) is the service's: pure checks, no cluster."""
from __future__ import annotations

import copy
import json

from aigc_gateway.idempotency import Claim
from aigc_gateway.services.template import manifest, replay
from aigc_gateway.services.template.validation import check_new, check_update

from .samples import sample
from .test_validation import POLICY

CLAIM = Claim("k" * 64, "replica-1", 0)
KEY = "aigc.gateway.io/request"


def parsed(obj: dict) -> manifest.Parsed:
    return manifest.parse_text(json.dumps(obj), POLICY.max_manifest_bytes)


def test_the_digest_is_the_claims_and_not_the_key() -> None:
    marked = replay.mark(sample(), POLICY, CLAIM)
    note = marked["metadata"]["annotations"][KEY]
    assert note == replay.digest(CLAIM) != CLAIM.key and len(note) == 64
    assert replay.carries(marked, POLICY, CLAIM)
    assert not replay.carries(marked, POLICY, Claim("j" * 64, "replica-1", 0))
    assert not replay.carries(marked, POLICY, None) and not replay.carries(sample(), POLICY, CLAIM)
    assert replay.mark(sample(), POLICY, None) == sample()  # no request id: nothing written


def test_an_admin_given_digest_is_dropped_silently_from_a_create() -> None:
    given = replay.mark(sample(), POLICY, CLAIM)
    checked = check_new(parsed(given), POLICY, "default")
    assert checked.ok and KEY not in (checked.manifest["metadata"].get("annotations") or {})
    assert checked.warnings == check_new(parsed(sample()), POLICY, "default").warnings  # nothing said about it


def test_the_digest_is_never_a_change_of_an_update() -> None:
    current = check_new(parsed(sample()), POLICY, "default").manifest
    current["metadata"].update(uid="u", resourceVersion="1")
    written = replay.mark(current, POLICY, CLAIM)
    # The manifest read back (carrying the digest) or without it, or with another one: nothing changes.
    for source in (written, current, replay.mark(current, POLICY, Claim("j" * 64, "r", 0))):
        checked = check_update(written, parsed(copy.deepcopy(source)), [], POLICY)
        assert checked.ok and checked.change.changed_paths == []
