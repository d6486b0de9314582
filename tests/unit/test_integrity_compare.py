"""compare_fingerprints, the in-place sort and the file formats on hand-built fingerprints: no database."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from upgate.checks.integrity import (
    Damage,
    Fingerprint,
    _Collector,
    _Matcher,
    compare_fingerprints,
    diff_fingerprints,
    split_excluded,
)

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


def hashed_fp(key_hashes: list[int], hashes: list[int], names: Path | None = None) -> Fingerprint:
    return Fingerprint("memories", ["tenant", "slug"], ["tenant", "slug", "body"], len(key_hashes),
                       np.array(key_hashes, dtype=np.int64), np.array(hashes, dtype=np.uint64),
                       key_kind="hashed", key_names=names)


def rows_fp(hashes: list[int]) -> Fingerprint:
    return Fingerprint("audit", [], ["who", "what"], len(hashes), np.empty(0, np.int64),
                       np.sort(np.array(hashes, dtype=np.uint64)))


def test_identical_fingerprints_are_ok() -> None:
    base = int_fp([1, 2, 3], [10, 20, 30])
    result = compare_fingerprints(base, int_fp([1, 2, 3], [10, 20, 30]))
    assert result.ok, result.summary
    assert result.summary == "episodic_logs: 3 rows, 0 lost, 0 changed, 0 added"
    assert result.evidence["lost"] == {"count": 0, "first": []}
    assert result.evidence["key_kind"] == "integer"


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
    assert diff_fingerprints(base, current).lost.tolist() == list(range(100))  # the full list, for a repair


def test_mismatched_columns_are_refused() -> None:
    base = int_fp([1], [10])
    current = int_fp([1], [10], columns=["id", "agent"])
    result = compare_fingerprints(base, current)
    assert not result.ok
    assert "cannot compare" in result.summary
    assert result.evidence["current_columns"] == ["id", "agent"]


def test_hashed_keys_are_named_from_the_side_files(tmp_path: Path) -> None:
    names = tmp_path / "memories.key-names.txt"
    names.write_text('\n0000000000000002\t["t1", "b"]\n0000000000000003\t["t1", "c"]'
                     '\nfffffffffffffffe\t["t2", null]')
    base = hashed_fp([-2, 2, 3], [1, 2, 3], names)
    result = compare_fingerprints(base, hashed_fp([-2, 3, 9], [1, 4, 5]))
    assert result.evidence["lost"]["first"] == [["t1", "b"]]
    assert result.evidence["changed"]["first"] == [["t1", "c"]]
    assert result.evidence["added"]["first"] == ["#0000000000000009"]  # not in any side file: its hash
    assert "keys (t1, b)" in result.summary
    lost = compare_fingerprints(base, hashed_fp([2, 3], [2, 3]))
    assert lost.evidence["lost"]["first"] == [["t2", None]]


def test_keyless_tables_compare_as_multisets() -> None:
    base = rows_fp([5, 5, 5, 7, 9])
    assert compare_fingerprints(base, rows_fp([9, 5, 7, 5, 5])).ok
    result = compare_fingerprints(base, rows_fp([5, 7, 11]), allow_added=False)
    assert result.evidence["lost"]["count"] == 3  # two copies of 5 and the 9
    assert result.evidence["lost"]["first"] == [
        {"row_hash": "#0000000000000005", "copies": 2, "row": None},
        {"row_hash": "#0000000000000009", "copies": 1, "row": None},
    ]
    assert result.evidence["added"]["count"] == 1 and result.evidence["changed"]["count"] == 0
    assert result.summary == ("audit: 3 rows lost (#0000000000000005 ×2, #0000000000000009), 0 changed, "
                              "1 added (#000000000000000b) (no key: compared as a multiset of rows)")


def test_ignore_attributes_differences_instead_of_failing() -> None:
    base = int_fp([1, 2, 3], [10, 20, 30])
    current = int_fp([1, 3, 4], [11, 30, 40])
    result = compare_fingerprints(base, current, ignore=[1, 2, 4])
    assert result.ok, result.summary
    assert result.evidence["attributed"] == {"lost": 1, "changed": 1, "added": 1}
    assert "attributed elsewhere: 1 lost, 1 changed, 1 added" in result.summary


def test_signed_and_unsigned_hashes_compare_equal() -> None:
    base = int_fp([1], [2**63 + 5])
    current = Fingerprint("episodic_logs", ["id"], COLUMNS, 1, np.array([1]), np.array([-(2**63) + 5], np.int64))
    assert compare_fingerprints(base, current).ok


@pytest.mark.parametrize("layout", ["random", "nearly sorted", "in order", "one run", "with empty runs"])
def test_chunks_come_out_in_key_order_with_their_hashes(layout: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("upgate.checks.integrity._MERGE_ROWS", 1000)  # many merge steps on a small table
    monkeypatch.setattr("upgate.checks.integrity._FENCE", 16)
    rng = np.random.default_rng(len(layout))
    keys = np.arange(-20_000, 20_000, dtype=np.int64) * 7919
    if layout == "random":
        keys = rng.permutation(keys)
    elif layout == "nearly sorted":  # as a heap stores rows: a few land a little before their neighbours
        moved = rng.choice(keys.size - 50, 400, replace=False)
        keys[moved], keys[moved + 37] = keys[moved + 37], keys[moved].copy()
    hashes = (keys.astype(np.uint64) * np.uint64(2654435761)) ^ np.uint64(0xABCDEF)
    expected = dict(zip(keys.tolist(), hashes.tolist(), strict=True))
    collector = _Collector("integer", None)
    cuts = [0, keys.size] if layout == "one run" else [0, *range(3000, keys.size, 3000), keys.size]
    if layout == "with empty runs":
        cuts = [0, 0, *range(5000, keys.size, 5000), keys.size, keys.size]
    for index, (lo, hi) in enumerate(zip(cuts, cuts[1:], strict=False)):
        collector(index, hi - lo, keys[lo:hi].astype(">i8"), hashes[lo:hi].astype(">u8"), None)
    out_keys, out_hashes = collector.assemble()
    assert bool(np.all(np.diff(out_keys) > 0)) and out_keys.size == keys.size
    assert dict(zip(out_keys.tolist(), out_hashes.tolist(), strict=True)) == expected


@pytest.mark.parametrize("keys_are", ["serial", "serial with gaps", "sparse"])
@pytest.mark.parametrize("order", ["in order", "nearly sorted", "random"])
def test_blocks_matched_against_the_baseline_find_what_the_full_diff_finds(keys_are: str, order: str) -> None:
    rng = np.random.default_rng(len(keys_are) * 10 + len(order))
    if keys_are == "serial":
        base_keys = np.arange(5_000, 25_000, dtype=np.int64)
    elif keys_are == "serial with gaps":
        base_keys = np.setdiff1d(np.arange(20_000, dtype=np.int64), rng.choice(20_000, 900, replace=False))
    else:
        base_keys = np.unique(rng.integers(-(2**62), 2**62, 20_000))
    base_hashes = rng.integers(0, 2**63, base_keys.size).astype(np.uint64)
    baseline = Fingerprint("episodic_logs", ["id"], COLUMNS, base_keys.size, base_keys, base_hashes)
    kept = rng.random(base_keys.size) > 0.01  # lost
    keys, hashes = base_keys[kept], base_hashes[kept].copy()
    hashes[rng.random(keys.size) < 0.01] ^= np.uint64(1)  # changed
    new_keys = np.setdiff1d(rng.integers(0, 40_000, 300), base_keys)  # added, inside and past the baseline
    keys, hashes = np.concatenate([keys, new_keys]), np.concatenate([hashes, np.ones(new_keys.size, np.uint64)])
    if order == "random":
        placed = rng.permutation(keys.size)
    elif order == "nearly sorted":
        placed = np.argsort(np.arange(keys.size) + np.where(rng.random(keys.size) < 0.03, 250, 0), kind="stable")
    else:
        placed = np.argsort(keys, kind="stable")
    keys, hashes = keys[placed], hashes[placed]
    matcher = _Matcher(baseline)
    for lo in range(0, keys.size, 1_000):
        block = slice(lo, lo + 1_000)
        matcher(0, keys[block].size, keys[block].astype(">i8"), hashes[block].astype(">u8"), None)
    got = matcher.damage()
    expected = diff_fingerprints(baseline, Fingerprint("episodic_logs", ["id"], COLUMNS, keys.size, keys, hashes))
    assert got.lost.size and got.changed.size and got.added.size
    for kind in ("lost", "changed", "added"):
        assert np.array_equal(getattr(got, kind), getattr(expected, kind)), kind


@pytest.mark.parametrize("twice", ["a kept key, in one block", "a kept key, in two blocks", "a new key, in two blocks"])
def test_a_key_read_twice_while_matching_is_refused(twice: str) -> None:
    base_keys = np.arange(1, 1_001, dtype=np.int64)
    baseline = Fingerprint("episodic_logs", ["id"], COLUMNS, base_keys.size, base_keys, base_keys.astype(np.uint64))
    again = 5_000 if twice.startswith("a new") else 17
    blocks = [np.arange(1, 501), np.arange(501, 1_001)]
    if twice.endswith("one block"):
        blocks[0] = np.append(blocks[0], again)
    elif twice.startswith("a kept"):
        blocks[1] = np.append(blocks[1], again)  # 17 came in the first block
    else:
        blocks = [np.append(blocks[0], again), np.append(blocks[1], again)]
    matcher = _Matcher(baseline)
    with pytest.raises(ValueError, match="not unique now"):
        for block in blocks:
            matcher(0, block.size, block.astype(">i8"), block.astype(">u8"), None)
        matcher.damage()


def test_save_load_round_trip_without_database(tmp_path: Path) -> None:
    names = tmp_path / "src.key-names.txt"
    names.write_text('\n0000000000000001\t["a", null]')
    base = hashed_fp([1, 2], [1, 2], names)
    base.types = {"tenant": "text", "slug": "text", "body": "text"}
    base.save(tmp_path / "out")
    loaded = Fingerprint.load(tmp_path / "out", "memories")
    assert loaded.key_kind == "hashed" and loaded.types == base.types
    assert loaded.key_names is not None and loaded.key_names.read_text() == names.read_text()
    assert compare_fingerprints(base, loaded).ok
    keyless = rows_fp([3, 3, 1])
    keyless.save(tmp_path / "out")
    assert Fingerprint.load(tmp_path / "out", "audit").hashes.tolist() == [1, 3, 3]


def test_damage_round_trip(tmp_path: Path) -> None:
    damage = diff_fingerprints(int_fp([1, 2, 3], [1, 2, 3]), int_fp([2, 3, 4], [2, 9, 4]))
    assert damage.save(tmp_path).name == "episodic_logs.damage.npz"
    loaded = Damage.load(tmp_path, "episodic_logs")
    assert (loaded.lost.tolist(), loaded.changed.tolist(), loaded.added.tolist()) == ([1], [3], [4])
    assert loaded.table == "episodic_logs" and loaded.current_count == 3


def test_bookkeeping_tables_are_split_off_by_pattern() -> None:
    tables = ['"__EFMigrationsHistory"', "alembic_version", "app.django_migrations", "logs", "schema_migrations_x"]
    kept, excluded = split_excluded(tables, ["__efmigrationshistory", "alembic_version", "django_migrations",
                                             "schema_migrations"])
    assert kept == ["logs", "schema_migrations_x"]
    assert excluded == ['"__EFMigrationsHistory"', "alembic_version", "app.django_migrations"]
    assert split_excluded(["audit_2026", "audit"], ["audit_*"]) == (["audit"], ["audit_2026"])


def test_bookkeeping_tables_are_excluded_by_default_and_shown_by_check_config(tmp_path: Path, capsys) -> None:
    from upgate.cli import main
    from upgate.config import IntegrityConfig

    defaults = IntegrityConfig().excluded()
    for table in ("alembic_version", "django_migrations", "flyway_schema_history", "schema_migrations",
                  "knex_migrations", "__EFMigrationsHistory", "goose_db_version", "databasechangelog",
                  "databasechangeloglock"):
        assert table in defaults
    assert IntegrityConfig(extend_exclude=["audit_*"]).excluded() == [*defaults, "audit_*"]
    assert IntegrityConfig(exclude=[]).excluded() == []
    config = tmp_path / "upgate.toml"
    config.write_text('[target]\nname = "app"\n\n[database]\nurl = "postgresql://app@db/prod"\n')
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "integrity tables: all" in out and "alembic_version, django_migrations" in out
