"""Whether a saved position can still be streamed from."""

from __future__ import annotations

import pytest

from cdc.capture.positions import SourceFacts, mariadb_gtid_contains, resume_from, unavailable
from transform.errors import FatalError
from transform.model import Position

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


# Which server: the resume decision (MariaDB forms as the server writes them, MySQL 8's documented ones)

SAVED = Position("mysql-bin.000004", 5727, "0-1-9066")


def facts(server_id: int = 1, uuid: str = "", has: bool | None = True) -> SourceFacts:
    return SourceFacts(server_id, uuid, "db2.example:3306", has)


def test_the_same_server_resumes_at_the_saved_offset() -> None:
    assert resume_from(SAVED, (1, ""), facts()).position == SAVED
    assert resume_from(SAVED, None, facts(7)).position == SAVED  # saved before identities were kept
    no_gtid = Position("binlog.000002", 900)
    assert resume_from(no_gtid, (5, "3e11fa47-71ca-11e1-9e33-c80aa9429562"),
                       facts(5, "3e11fa47-71ca-11e1-9e33-c80aa9429562", None)).position == no_gtid


def test_a_reset_binlog_on_the_same_server_stops_with_the_way_out() -> None:
    with pytest.raises(FatalError) as e:
        resume_from(SAVED, (1, ""), facts(has=False))
    assert "RESET MASTER" in str(e.value) and "mysql-bin.000004:5727" in str(e.value)
    assert "softcart-sync resnapshot" in str(e.value)


def test_another_server_holding_the_saved_transactions_resumes_by_gtid() -> None:
    r = resume_from(SAVED, (1, ""), facts(2))
    assert r.by_gtid and r.position.gtid == "0-1-9066" and "server_id 1" in r.note and "server_id 2" in r.note
    mysql = Position("binlog.000009", 157, "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-77")
    r = resume_from(mysql, (1, "3e11fa47-71ca-11e1-9e33-c80aa9429562"),
                    facts(1, "4a2b0c9e-1111-11ee-8c99-0242ac120002"))  # same server_id, another uuid
    assert r.by_gtid


def test_another_server_without_the_saved_transactions_or_gtids_stops_naming_both() -> None:
    with pytest.raises(FatalError) as e:
        resume_from(SAVED, (1, ""), facts(2, has=False))
    text = str(e.value)
    assert "server_id 1" in text and "db2.example:3306, server_id 2" in text and "resnapshot" in text
    with pytest.raises(FatalError, match="without GTIDs"):
        resume_from(Position("binlog.000002", 900), (1, "a"), facts(2, "b", None))


def test_mariadb_gtid_state_holds_a_saved_one_per_domain_by_sequence() -> None:
    assert mariadb_gtid_contains("0-1-9100", "0-1-9066")
    assert mariadb_gtid_contains("0-2-9100", "0-1-9066")  # a failover: another server wrote the last one
    assert mariadb_gtid_contains("0-1-9066,1-5-3", "1-5-3,0-1-9066")
    assert not mariadb_gtid_contains("0-1-12", "0-1-9066")  # RESET MASTER, then a few transactions
    assert not mariadb_gtid_contains("", "0-1-9066")
    assert not mariadb_gtid_contains("0-1-9100", "0-1-9066,1-5-3")  # a domain it never had
    assert mariadb_gtid_contains("0-1-1", "")


def test_mariadb_the_same_server_id_with_another_history_at_the_offset_is_a_reset_never_a_failover() -> None:
    """The GTID state at the saved offset tells the same history from another. Under the same
    server_id (MariaDB has no uuid) another history is a RESET MASTER or a restore: the new
    history's sequence numbers may pass the saved ones, which proves nothing, and resuming after
    them by GTID skipped the new history's first transactions (#30). A failover is to a server of
    another server_id (replication refuses equal ids)."""
    here = SourceFacts(1, "", "db2.example:3306", True, gtid_at_saved="0-1-9066")
    assert resume_from(SAVED, (1, ""), here).position == SAVED
    for has_saved in (True, False):
        reset = SourceFacts(1, "", "db2.example:3306", has_saved, gtid_at_saved="0-1-311")
        with pytest.raises(FatalError, match=r"another history at the saved position .* reset \(RESET MASTER; on"
                                             r" MySQL 8.4\+: RESET BINARY LOGS AND GTIDS\).*resnapshot"):
            resume_from(SAVED, (1, ""), reset)
        inside = SourceFacts(1, "", "db2.example:3306", has_saved, gtid_at_saved="")  # no event boundary there
        with pytest.raises(FatalError, match="another history at the saved position"):
            resume_from(SAVED, (1, ""), inside)
    failover = SourceFacts(2, "", "db2.example:3306", True, gtid_at_saved="0-1-311")
    assert resume_from(SAVED, (1, ""), failover).by_gtid


def test_mysql_another_history_at_the_saved_offset_is_a_reset_whatever_its_gtids() -> None:
    """MySQL keeps its server_uuid across RESET BINARY LOGS AND GTIDS: the GTID set at the saved
    offset (read from the binlog) tells. The new history's set may hold the saved one (so the
    subset check passed and 20 changes were skipped without a word, #31 item 3)."""
    uuid = "3e11fa47-71ca-11e1-9e33-c80aa9429562"
    saved = Position("binlog.000001", 9000, f"{uuid}:1-40")
    same = SourceFacts(1, uuid, "db:3306", True, gtid_at_saved=f"{uuid.upper()}:1-20:21-40")  # other spelling
    assert resume_from(saved, (1, uuid), same).position == saved
    for there in (f"{uuid}:1-52", ""):  # another history at the offset, or no event boundary there
        with pytest.raises(FatalError, match=r"another history at the saved position.*RESET BINARY LOGS AND GTIDS"):
            resume_from(saved, (1, uuid), SourceFacts(1, uuid, "db:3306", True, gtid_at_saved=there))
