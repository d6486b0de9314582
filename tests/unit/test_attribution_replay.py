"""Attribution without a database: which class a transaction is, and what the upgrade left of one row."""

from __future__ import annotations

from upgate.checks.attribution import (
    LIVE,
    RESTORE,
    UNKNOWN,
    UNREADABLE,
    UPGATE,
    UPGRADE,
    BaselineSnapshot,
    Classifier,
    Event,
    XactRecord,
    replay_key,
    replay_states,
    table_events,
)
from upgate.checks.changes import DELETE, INSERT, TRUNCATE, UPDATE, Change, Transaction

BASE = {"aid": "7", "abalance": "0", "filler": "f"}
PRESERVED = ["abalance", "filler"]


def live(seq: int, op: str, **values: str) -> Event:
    return Event(seq, LIVE, op, dict(values) if op != DELETE else None)


def upgrade(seq: int, op: str, **values: str) -> Event:
    return Event(seq, UPGRADE, op, dict(values) if op != DELETE else None)


def test_classes_by_application_name_and_unknown_when_nothing_recorded():
    who = Classifier({(1 << 32) + 10: XactRecord((1 << 32) + 10, "pgbench"),
                      (1 << 32) + 11: XactRecord((1 << 32) + 11, "upgate-migrate"),
                      (1 << 32) + 12: XactRecord((1 << 32) + 12, "upgate-repair")})
    assert [who.classify(x) for x in (10, 11, 12, 13)] == [LIVE, UPGRADE, UPGATE, UNKNOWN]


def test_baseline_snapshot_shows_what_committed_before_it_across_an_epoch():
    shown = BaselineSnapshot.parse(f"{(1 << 32) + 100}:{(1 << 32) + 105}:{(1 << 32) + 102}")
    assert shown.shows(99) and shown.shows(101)
    assert not shown.shows(102) and not shown.shows(105) and not shown.shows(200)
    near_wrap = BaselineSnapshot.parse(f"{(1 << 32) - 5}:{(1 << 32) - 2}:")
    assert near_wrap.widen(3) == (1 << 32) + 3 and not near_wrap.shows(3)


def test_live_traffic_alone_is_never_damage():
    events = [live(1, UPDATE, aid="7", abalance="5", filler="f"), live(2, UPDATE, aid="7", abalance="9", filler="f")]
    assert replay_key(events, BASE, PRESERVED).state == "ok"


def test_upgrade_that_keeps_preserved_columns_under_live_writes_is_not_damage():
    # A backfill writes only a new column; live traffic writes before and after it.
    events = [live(1, UPDATE, aid="7", abalance="5", filler="f"),
              upgrade(2, UPDATE, aid="7", abalance="5", filler="f", tier="1"),
              live(3, UPDATE, aid="7", abalance="8", filler="f", tier="1")]
    assert replay_key(events, BASE, PRESERVED).state == "ok"


def test_damage_carried_forward_by_a_live_update_is_found_and_repairs_only_that_column():
    events = [upgrade(1, UPDATE, aid="7", abalance="0", filler="tiered"),
              live(2, UPDATE, aid="7", abalance="4", filler="tiered")]  # the app wrote abalance, carried filler
    outcome = replay_key(events, BASE, PRESERVED)
    assert outcome.state == "changed" and outcome.expected == {"filler": "f"} and outcome.columns == ("filler",)
    state = replay_states(events, BASE, PRESERVED)
    assert state.expected == {"aid": "7", "abalance": "4", "filler": "f"}  # what a replay writes


def test_live_write_over_a_column_the_upgrade_damaged_is_contested():
    events = [upgrade(1, UPDATE, aid="7", abalance="100", filler="f"),
              live(2, UPDATE, aid="7", abalance="105", filler="f")]  # abalance + 5, computed from the damage
    outcome = replay_key(events, BASE, PRESERVED)
    assert outcome.state == "contested" and outcome.contested == ("abalance",)


def test_upgrade_undoing_a_live_write_is_damage_even_when_the_row_equals_its_baseline():
    events = [live(1, UPDATE, aid="7", abalance="5", filler="f"), upgrade(2, UPDATE, aid="7", abalance="0", filler="f")]
    outcome = replay_key(events, BASE, PRESERVED)
    assert outcome.state == "changed" and outcome.expected == {"abalance": "5"}


def test_lost_row_comes_back_as_live_traffic_left_it():
    events = [live(1, UPDATE, aid="7", abalance="3", filler="f"), upgrade(2, DELETE)]
    outcome = replay_key(events, BASE, PRESERVED)
    assert outcome.state == "lost" and outcome.expected == {"aid": "7", "abalance": "3", "filler": "f"}


def test_rows_live_traffic_deleted_or_inserted_are_explained():
    assert replay_key([upgrade(1, UPDATE, aid="7", abalance="0", filler="f", tier="2"), live(2, DELETE)], BASE,
                      PRESERVED).state == "ok"
    assert replay_key([live(1, INSERT, aid="8", abalance="0", filler="n"),
                       upgrade(2, UPDATE, aid="8", abalance="0", filler="n", tier="1")], None, PRESERVED).state == "ok"


def test_a_restore_makes_the_row_what_it_should_be():
    events = [upgrade(1, UPDATE, aid="7", abalance="0", filler="tiered"), Event(2, RESTORE, RESTORE),
              live(3, UPDATE, aid="7", abalance="2", filler="f")]
    assert replay_key(events, BASE, PRESERVED).state == "ok"


def test_unreadable_baseline_is_unverifiable_until_live_traffic_writes_the_whole_row():
    assert replay_key([upgrade(1, UPDATE, aid="7", abalance="0", filler="x")], UNREADABLE, PRESERVED).state == \
        "unverifiable"
    assert replay_key([live(1, UPDATE, aid="7", abalance="1", filler="f")], UNREADABLE, PRESERVED).state == "ok"


def test_table_events_by_key_with_key_changes_truncates_and_restores():
    who = Classifier({10: XactRecord(10, "pgbench"), 11: XactRecord(11, "upgate-migrate")})
    stream = [
        Transaction(10, 1, 2, None, [Change("public.accounts", UPDATE, {"aid": "1", "abalance": "5"})]),
        Transaction(11, 3, 4, None, [Change("public.accounts", UPDATE, {"aid": "2", "abalance": "0"},
                                            old_key={"aid": "1"})]),
        RESTORE,
        Transaction(10, 5, 6, None, [Change("public.accounts", TRUNCATE, tables=("public.accounts",))]),
        Transaction(12, 7, 8, None, [Change("public.accounts", DELETE, old_key={"bid": "1"})]),
    ]
    events = table_events(stream, "public.accounts", ["aid"], who)
    assert [e.op for e in events.by_key[("1",)]] == [UPDATE, DELETE]
    assert [e.op for e in events.by_key[("2",)]] == [INSERT]
    assert [e.cls for e in events.sweeps] == [RESTORE, LIVE]
    assert events.unkeyed[UNKNOWN] == 1  # a delete by another key, from a transaction nothing recorded
    assert [e.cls for e in events.history(("2",))] == [UPGRADE, RESTORE, LIVE]
    assert events.changes(LIVE) == 2 and events.transactions[UPGRADE] == {11}


def test_table_events_extend_and_name_what_the_new_part_touched():
    who = Classifier({10: XactRecord(10, "pgbench")})
    first = table_events([Transaction(10, 1, 2, None, [Change("public.t", UPDATE, {"id": "1"})])], "public.t", ["id"],
                         who)
    more = table_events([Transaction(10, 3, 4, None, [Change("public.t", UPDATE, {"id": "2"})])], "public.t", ["id"],
                        who, into=first)
    assert more is first and more.touched == {("2",)} and set(more.by_key) == {("1",), ("2",)}
    assert more.by_key[("2",)][0].seq > more.by_key[("1",)][0].seq


def test_keyless_tables_keep_inserted_rows_and_count_what_they_cannot_see():
    who = Classifier({10: XactRecord(10, "pgbench")})
    stream = [Transaction(10, 1, 2, None, [Change("public.history", INSERT, {"delta": "5"}),
                                           Change("public.history", DELETE, old_key={})])]
    events = table_events(stream, "public.history", [], who)
    assert events.inserted[LIVE] == [{"delta": "5"}] and events.unkeyed[LIVE] == 1
