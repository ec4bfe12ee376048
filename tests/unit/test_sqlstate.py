"""The one warehouse error classifier, by SQLSTATE, on the codes IBM Db2 and PostgreSQL document."""

from __future__ import annotations

import pytest

from transform.errors import Kind, db2_connect_state, is_duplicate_key
from transform.errors import sqlstate_fix as fix
from transform.errors import sqlstate_kind as classify


@pytest.mark.parametrize(("state", "kind"), [
    # Db2 (SQLCODE in the comment) and PostgreSQL forms
    ("23505", Kind.REJECTED),  # SQL0803N duplicate key / unique_violation
    ("23503", Kind.REJECTED),  # SQL0530N foreign key / foreign_key_violation
    ("23502", Kind.REJECTED),  # SQL0407N NULL into NOT NULL / not_null_violation
    ("22001", Kind.REJECTED),  # SQL0433N value too long / string_data_right_truncation
    ("22003", Kind.REJECTED),  # SQL0413N numeric overflow / numeric_value_out_of_range
    ("22007", Kind.REJECTED),  # SQL0180N bad datetime syntax / invalid_datetime_format
    ("21506", Kind.REJECTED),  # SQL0788N a MERGE target row matched by several source rows
    ("21000", Kind.REJECTED),  # cardinality_violation
    ("42704", Kind.CONFIG),  # SQL0204N object not found
    ("42P01", Kind.CONFIG),  # undefined_table
    ("42501", Kind.CONFIG),  # SQL0551N no privilege / insufficient_privilege
    ("42502", Kind.CONFIG),  # SQL0552N not authorised
    ("42727", Kind.CONFIG),  # SQL0286N no user temporary table space
    ("3F000", Kind.CONFIG),  # invalid_schema_name
    ("08001", Kind.TRANSIENT),  # SQL30081N communication error / sqlclient_unable_to_establish_sqlconnection
    ("08006", Kind.TRANSIENT),  # connection_failure
    ("40001", Kind.TRANSIENT),  # SQL0911N deadlock or timeout, rolled back / serialization_failure
    ("40P01", Kind.TRANSIENT),  # deadlock_detected
    # can never succeed as they are (#32 item 5): retried for ever before, each attempt re-staging
    # a whole batch (a full reload: every fact) and rolling it back
    ("57011", Kind.CONFIG),  # SQL0964C log full, SQL0912N lock list full, SQL0289N table space full
    ("42601", Kind.CONFIG),  # SQL0104N syntax error / syntax_error
    ("42703", Kind.CONFIG),  # SQL0206N unknown column / undefined_column
    ("42818", Kind.CONFIG),  # SQL0401N incompatible operands
    ("42821", Kind.CONFIG),  # SQL0408N value not assignable to the column's type
    ("54001", Kind.CONFIG),  # SQL0101N statement too complex / statement_too_complex
    ("28000", Kind.CONFIG),  # invalid_authorization_specification (Db2's SQL30082N: db2_connect_state)
    ("08004", Kind.CONFIG),  # SQL1060N no CONNECT privilege
    ("57033", Kind.TRANSIENT),  # SQL0913N deadlock or timeout, not rolled back
    ("57014", Kind.TRANSIENT),  # SQL0952N cancelled (QueryTimeout) / query_canceled (statement_timeout)
    ("53200", Kind.TRANSIENT),  # out_of_memory
    ("", Kind.TRANSIENT),  # no state at all (the driver lost the connection)
])
def test_each_documented_state_is_classified(state: str, kind: Kind) -> None:
    assert classify(state) is kind


def test_configuration_states_name_the_fix_and_duplicates_are_told() -> None:
    assert "warehouse init" in fix("42704") and "TEMPORARY TABLESPACE" in fix("42727") and "GRANT" in fix("42501")
    assert fix("23505") == ""
    assert is_duplicate_key("23505") and not is_duplicate_key("23503")


def test_a_refused_db2_login_is_a_setting_not_a_network_failure() -> None:
    """SQL30082N (security processing failed: a wrong or expired password) reports 08001 like
    a listener that isn't there; SQL1060N (no CONNECT) reports 08004."""
    wrong = ("[IBM][CLI Driver] SQL30082N  Security processing failed with reason \"24\""
             " (\"USERNAME AND/OR PASSWORD INVALID\").")
    assert classify(db2_connect_state(wrong, "08001")) is Kind.CONFIG and "PASSWORD" in fix("28000")
    assert classify(db2_connect_state("[IBM][CLI Driver] SQL30081N  A communication error", "08001")) is Kind.TRANSIENT
    assert classify(db2_connect_state("SQL1060N  User \"LOADER\" does not have the CONNECT privilege.", "08004")) \
        is Kind.CONFIG and "GRANT CONNECT" in fix("08004")
    assert all(p in fix("57011") for p in ("LOGFILSIZ", "LOGPRIMARY", "LOGSECOND", "LOCKLIST"))
