"""Maintenance reservations: a name from the action id, and what counts as the reservation asked for."""

from __future__ import annotations

import pytest

from opsloop.models.reservation import Reservation, judge_reservation, requested, reservation_name

pytestmark = pytest.mark.unit

ACTION = {"action_id": "maint-00ff00ff00ff00ff",
          "params": {"nodes": "gpu-b2,gpu-a1", "start_ms": "1800000500", "end_ms": "1800014400000"}}


def test_the_name_is_the_action_id_so_a_retry_finds_the_same_reservation():
    assert reservation_name("maint-00ff00ff00ff00ff") == "opsloop-maint-00ff00ff00ff00ff"
    assert reservation_name("maint-00ff00ff00ff00ff") == reservation_name("maint-00ff00ff00ff00ff")


@pytest.mark.parametrize("action_id", ["a b", "x;rm -rf /", "é", "", "a" * 80])
def test_an_id_slurm_could_not_take_gets_a_safe_name_that_still_tells_ids_apart(action_id):
    name = reservation_name(action_id)
    assert name.startswith("opsloop-") and len(name) <= 68
    assert all(c.isascii() and (c.isalnum() or c in "-_") for c in name)
    assert name != reservation_name(action_id + "x")


def test_the_request_has_sorted_nodes_and_whole_seconds():
    want = requested(ACTION)
    assert (want.nodes, want.start_s, want.end_s, want.flags) == (("gpu-a1", "gpu-b2"), 1_800_000, 1_800_014_400,
                                                                   ("MAINT",))


def test_verified_only_with_the_same_nodes_window_and_the_maint_flag():
    want = requested(ACTION)
    same = Reservation(want.name, want.nodes, want.start_s, want.end_s, ("MAINT", "IGNORE_JOBS", "SPEC_NODES"))
    assert judge_reservation(want, same, now_ms=0, deadline_ms=1).status == "verified"
    for other in (Reservation(want.name, ("gpu-a1",), want.start_s, want.end_s, ("MAINT",)),
                  Reservation(want.name, want.nodes, want.start_s + 3600, want.end_s, ("MAINT",)),
                  Reservation(want.name, want.nodes, want.start_s, want.end_s, ("IGNORE_JOBS",))):
        assert judge_reservation(want, other, now_ms=0, deadline_ms=1).status == "failed"
    assert judge_reservation(want, None, now_ms=0, deadline_ms=1).status == "pending"
    assert judge_reservation(want, None, now_ms=1, deadline_ms=1).text.endswith("not found")
