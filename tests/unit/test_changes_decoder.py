"""The pgoutput decoder on messages built byte by byte as PostgreSQL 16 sends them (protocol version 1)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

import pytest

from upgate.checks.changes import (
    DELETE,
    INSERT,
    TRUNCATE,
    UPDATE,
    Decoder,
    ProtocolError,
    Transaction,
    format_lsn,
    parse_lsn,
    read_transactions,
    write_transactions,
)


def _s(text: str) -> bytes:
    return text.encode() + b"\0"


def begin(xid: int, lsn: int = 0x1000, micros: int = 0) -> bytes:
    return b"B" + struct.pack(">QqI", lsn, micros, xid)


def commit(lsn: int = 0x1000, end: int = 0x1040, micros: int = 789_000_000_000_000) -> bytes:
    return b"C" + struct.pack(">bQQq", 0, lsn, end, micros)


def relation(oid: int, name: str, columns: list[tuple[str, bool]], schema: str = "public", replident: str = "d") -> bytes:
    out = b"R" + struct.pack(">I", oid) + _s(schema) + _s(name) + replident.encode() + struct.pack(">h", len(columns))
    for column, key in columns:
        out += struct.pack(">b", 1 if key else 0) + _s(column) + struct.pack(">Ii", 23, -1)
    return out


def tuple_data(*values: str | None | bytes) -> bytes:
    out = struct.pack(">h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value == b"u":
            out += b"u"
        else:
            raw = value.encode() if isinstance(value, str) else value
            out += b"t" + struct.pack(">i", len(raw)) + raw
    return out


ACCOUNTS = relation(16384, "accounts", [("aid", True), ("abalance", False), ("filler", False)])


def decode(*messages: bytes) -> list[Transaction]:
    decoder = Decoder()
    done = []
    for message in messages:
        finished = decoder.feed(message)
        if finished is not None:
            done.append(finished)
    return done


def test_insert_update_delete_in_one_transaction():
    [tx] = decode(
        begin(735, lsn=0x14AE5A0), ACCOUNTS,
        b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("1", "0", "  pad  "),
        b"U" + struct.pack(">I", 16384) + b"N" + tuple_data("1", "-5", "  pad  "),
        b"D" + struct.pack(">I", 16384) + b"K" + tuple_data("1", None, None),
        commit(lsn=0x14AE5A0, end=0x14AE5D8),
    )
    assert tx.xid == 735 and tx.commit_lsn == 0x14AE5A0 and tx.end_lsn == 0x14AE5D8
    assert tx.committed_at is not None and tx.committed_at.year > 2000
    insert, update, delete = tx.changes
    assert (insert.op, insert.table, insert.new) == (INSERT, "public.accounts",
                                                     {"aid": "1", "abalance": "0", "filler": "  pad  "})
    assert update.op == UPDATE and update.new == {"aid": "1", "abalance": "-5", "filler": "  pad  "}
    assert delete.op == DELETE and delete.old_key == {"aid": "1"} and delete.key(["aid"]) == ("1",)


def test_update_that_changes_the_key_carries_the_old_one():
    [tx] = decode(begin(1), ACCOUNTS,
                  b"U" + struct.pack(">I", 16384) + b"K" + tuple_data("4", None, None) + b"N" + tuple_data("100", "7", "f"),
                  commit())
    [change] = tx.changes
    assert change.key_before(["aid"]) == ("4",) and change.key(["aid"]) == ("100",)


def test_unchanged_toasted_value_is_not_sent():
    [tx] = decode(begin(2), ACCOUNTS, b"U" + struct.pack(">I", 16384) + b"N" + tuple_data("9", "3", b"u"), commit())
    [change] = tx.changes
    assert change.unchanged == ("filler",) and "filler" not in (change.new or {})


def test_truncate_names_every_table():
    other = relation(16390, "tellers", [("tid", True)])
    [tx] = decode(begin(3), ACCOUNTS, other, b"T" + struct.pack(">ib", 2, 0) + struct.pack(">II", 16384, 16390),
                  commit())
    assert [c.op for c in tx.changes] == [TRUNCATE, TRUNCATE]
    assert tx.changes[0].tables == ("public.accounts", "public.tellers")


def test_table_filter_keeps_only_the_named_tables():
    other = relation(16390, "tellers", [("tid", True)])
    decoder = Decoder(tables={"public.tellers"})
    for message in (begin(4), ACCOUNTS, other, b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("1", "0", "x"),
                    b"I" + struct.pack(">I", 16390) + b"N" + tuple_data("7")):
        decoder.feed(message)
    tx = decoder.feed(commit())
    assert tx is not None and [c.table for c in tx.changes] == ["public.tellers"]


@pytest.mark.parametrize("message, problem", [
    (b"I" + struct.pack(">I", 99) + b"N" + tuple_data("1"), "before its Relation"),
    (b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("1", "2"), "a row of 2 columns"),
    (b"I" + struct.pack(">I", 16384) + b"N" + struct.pack(">h", 3) + b"t" + struct.pack(">i", 50) + b"ab",
     "ends early"),
    (b"Z", "unknown pgoutput message"),
])
def test_malformed_messages_are_named(message, problem):
    decoder = Decoder()
    decoder.feed(begin(5))
    decoder.feed(ACCOUNTS)
    with pytest.raises(ProtocolError, match=problem):
        decoder.feed(message)


def test_commit_without_begin_is_an_error():
    with pytest.raises(ProtocolError, match="Commit without its Begin"):
        Decoder().feed(commit())


def test_lsn_text_round_trip():
    assert parse_lsn("0/14AE5A0") == 0x14AE5A0
    assert format_lsn(parse_lsn("3/A0000028")) == "3/A0000028"


def test_transactions_survive_a_file_and_a_torn_last_line(tmp_path):
    decoder = Decoder()
    txs = decode(begin(7), ACCOUNTS, b"I" + struct.pack(">I", 16384) + b"N" + tuple_data("1", "0", None), commit())
    decoder.feed(ACCOUNTS)
    path = tmp_path / "stream.jsonl"
    assert write_transactions(path, txs, decoder.relations) == 1
    with path.open("a") as f:
        f.write('{"xid": 8, "lsn": "0/1')  # a kill while writing
    [back] = list(read_transactions(path))
    assert back.xid == 7 and back.changes[0].new == {"aid": "1", "abalance": "0", "filler": None}
    assert back.committed_at == txs[0].committed_at and back.committed_at.tzinfo == UTC
    assert isinstance(back.committed_at, datetime)
