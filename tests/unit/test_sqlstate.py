"""The one warehouse error classifier, by SQLSTATE, on the codes IBM Db2 and PostgreSQL document."""

from __future__ import annotations

import pytest

from transform.errors import Kind, is_duplicate_key
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
    ("57011", Kind.TRANSIENT),  # SQL0968N / SQL0964C resources (log full)
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
