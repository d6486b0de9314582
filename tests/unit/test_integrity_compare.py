"""compare_fingerprints on hand-built fingerprints: no database needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from upgate.checks.integrity import Fingerprint, compare_fingerprints

COLUMNS = ["id", "agent", "content"]


def int_fp(keys: list[int], hashes: list[int], columns: list[str] = COLUMNS) -> Fingerprint:
    return Fingerprint(
        table="episodic_logs",
        key_columns=["id"],
        columns=columns,
        count=len(keys),
        keys=np.array(keys, dtype=np.int64),
        hashes=np.array(hashes, dtype=np.uint64),
    )


def text_fp(keys: list[tuple[str | None, ...]], hashes: list[int], key_columns: list[str]) -> Fingerprint:
    return Fingerprint(
        table="memories",
        key_columns=key_columns,
        columns=[*key_columns, "body"],
        count=len(keys),
        keys=keys,
        hashes=np.array(hashes, dtype=np.uint64),
    )


def test_identical_fingerprints_are_ok() -> None:
    base = int_fp([1, 2, 3], [10, 20, 30])
    result = compare_fingerprints(base, int_fp([1, 2, 3], [10, 20, 30]))
    assert result.ok, result.summary
    assert result.summary == "episodic_logs: 3 rows, 0 lost, 0 changed, 0 added"
    assert result.evidence["lost"] == {"count": 0, "first": []}


def test_lost_changed_added_are_named_by_key() -> None:
    base = int_fp([1, 2, 3, 4, 5], [10, 20, 30, 40, 50])
    current = int_fp([1, 3, 4, 5, 6, 7], [10, 31, 40, 50, 60, 70])
    result = compare_fingerprints(base, current)
    assert not result.ok
    assert result.evidence["lost"] == {"count": 1, "first": [2]}
    assert result.evidence["changed"] == {"count": 1, "first": [3]}
    assert result.evidence["added"] == {"count": 2, "first": [6, 7]}
    assert result.evidence["baseline_count"] == 5 and result.evidence["current_count"] == 6
    assert result.summary == "episodic_logs: 1 row lost (ids 2), 1 changed (ids 3), 2 added (allowed)"


def test_unsorted_keys_are_compared_by_key_not_position() -> None:
    base = int_fp([3, 1, 2], [30, 10, 20])
    assert compare_fingerprints(base, int_fp([1, 2, 3], [10, 20, 30])).ok
    result = compare_fingerprints(base, int_fp([2, 3, 1], [20, 30, 11]))
    assert result.evidence["changed"]["first"] == [1]


def test_added_rows_allowed_by_default_but_not_when_refused() -> None:
    base = int_fp([1, 2], [10, 20])
    current = int_fp([1, 2, 3], [10, 20, 30])
    allowed = compare_fingerprints(base, current)
    assert allowed.ok
    assert allowed.summary == "episodic_logs: 2 rows, 0 lost, 0 changed, 1 added (allowed)"
    refused = compare_fingerprints(base, current, allow_added=False)
    assert not refused.ok
    assert refused.summary == "episodic_logs: 0 rows lost, 0 changed, 1 added (ids 3)"


def test_first_n_truncates_lists_but_not_counts() -> None:
    base = int_fp(list(range(100)), list(range(100)))
    current = int_fp([], [])
    result = compare_fingerprints(base, current, first=5)
    assert result.evidence["lost"] == {"count": 100, "first": [0, 1, 2, 3, 4]}
    assert result.summary.startswith("episodic_logs: 100 rows lost (ids 0, 1, 2, 3, 4, …)")


def test_mismatched_columns_are_refused() -> None:
    base = int_fp([1], [10])
    current = int_fp([1], [10], columns=["id", "agent"])
    result = compare_fingerprints(base, current)
    assert not result.ok
    assert "cannot compare" in result.summary
    assert result.evidence["current_columns"] == ["id", "agent"]


def test_text_and_composite_keys() -> None:
    base = text_fp([("a",), ("b",), ("c",)], [1, 2, 3], ["name"])
    result = compare_fingerprints(base, text_fp([("a",), ("c",), ("d",)], [1, 4, 5], ["name"]))
    assert result.evidence["lost"]["first"] == ["b"]
    assert result.evidence["changed"]["first"] == ["c"]
    assert result.evidence["added"]["first"] == ["d"]
    base = text_fp([("1", "x"), ("1", "y")], [1, 2], ["tenant", "slug"])
    result = compare_fingerprints(base, text_fp([("1", "x")], [1], ["tenant", "slug"]))
    assert result.evidence["lost"]["first"] == [["1", "y"]]
    assert "keys (1, y)" in result.summary


def test_integer_baseline_against_text_keys_after_a_key_type_change() -> None:
    base = int_fp([1, 2], [10, 20])
    current = Fingerprint(
        "episodic_logs", ["id"], COLUMNS, 2, [("1",), ("2",)], np.array([10, 21], np.uint64)
    )
    result = compare_fingerprints(base, current)
    assert result.evidence["changed"]["first"] == ["2"]
    assert result.evidence["lost"]["count"] == 0


def test_signed_and_unsigned_hashes_compare_equal() -> None:
    base = int_fp([1], [2**63 + 5])
    current = Fingerprint(
        "episodic_logs", ["id"], COLUMNS, 1, np.array([1]), np.array([-(2**63) + 5], np.int64)
    )
    assert compare_fingerprints(base, current).ok


def test_save_load_round_trip_without_database(tmp_path: Path) -> None:
    base = text_fp([("a", None), ("b", "")], [1, 2], ["k1", "k2"])
    base.save(tmp_path)
    loaded = Fingerprint.load(tmp_path, "memories")
    assert loaded.keys == [("a", None), ("b", "")]
    assert compare_fingerprints(base, loaded).ok
