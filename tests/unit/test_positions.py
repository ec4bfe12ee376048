"""Whether a saved position can still be streamed from."""

from __future__ import annotations

from cdc.model import Position
from cdc.positions import unavailable

LOGS = [("mysql-bin.000007", 1000), ("mysql-bin.000008", 500)]


def test_position_in_a_kept_file_is_available() -> None:
    assert unavailable(Position("mysql-bin.000007", 400), LOGS) is None
    assert unavailable(Position("mysql-bin.000008", 500), LOGS) is None


def test_purged_file_names_saved_and_oldest_positions_and_the_way_out() -> None:
    why = unavailable(Position("mysql-bin.000003", 1234, "0-1-50"), LOGS)
    assert why is not None
    assert "mysql-bin.000003:1234" in why and "oldest available is mysql-bin.000007:4" in why
    assert "softcart-sync resnapshot" in why and "SOFTCART_AUTO_RESNAPSHOT" in why


def test_position_past_the_end_of_its_file_is_refused() -> None:
    why = unavailable(Position("mysql-bin.000008", 9999), LOGS)
    assert why is not None and "past the end" in why
