"""The fault table of docs/reliability.md claims only what tests that still exist and passed have shown."""

from __future__ import annotations

import json

import pytest

from tests import reliability


@pytest.fixture()
def table(tmp_path, monkeypatch):
    monkeypatch.setattr(reliability, "TABLE_DATA", tmp_path / "faults.json")
    monkeypatch.setattr(reliability, "TABLE_PAGE", tmp_path / "reliability.md")
    monkeypatch.setattr(reliability, "_RECORDED", {})
    monkeypatch.setattr(reliability, "_FAILED", set())
    row = {"fault": "f", "injected": "i", "outcome": "resumed", "lost": "nothing", "time_lost": "none"}
    stored = {name: {**row, "test": name} for name in
              ("test_a_table_row_is_dropped_when_its_test_fails_or_is_gone", "test_deleted_long_ago",
               "test_fault_rows_must_say_what_happened")}
    reliability.TABLE_DATA.write_text(json.dumps(stored))
    return reliability


def test_a_table_row_is_dropped_when_its_test_fails_or_is_gone(table):
    table.record_failure("test_fault_rows_must_say_what_happened")
    table.record_fault("test_reliability_new[x]", "new fault", "how", "retried once", "nothing", "1 step")
    table.write_table()
    kept = json.loads(table.TABLE_DATA.read_text())
    # The failed test's row and the row of a test no longer in tests/ are gone; this test's own row stays.
    assert set(kept) == {"test_a_table_row_is_dropped_when_its_test_fails_or_is_gone", "test_reliability_new[x]"}
    assert "| new fault | how | retried once |" in table.TABLE_PAGE.read_text()


def test_fault_rows_must_say_what_happened(table):
    with pytest.raises(ValueError, match="outcome"):
        table.record_fault("t", "fault", "how", "probably fine", "nothing", "none")
