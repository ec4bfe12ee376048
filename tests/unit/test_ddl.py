"""Which source schema changes staging can follow, and how (pure)."""

from __future__ import annotations

from transform.ddl import plan, renames, widens
from transform.schema import Column, Table


def col(name: str, column_type: str, nullable: bool = True) -> Column:
    data_type = column_type.split("(")[0].split()[0]
    precision = scale = fsp = None
    if data_type == "decimal":
        precision, scale = (int(x) for x in column_type[8:-1].split(","))
    if data_type in ("datetime", "timestamp", "time") and "(" in column_type:
        fsp = int(column_type.split("(")[1][:-1])
    return Column(name, data_type, column_type, nullable, precision, scale, fsp)


BASE = Table("t", (col("id", "int", False), col("a", "int"), col("b", "varchar(10)")), ("id",))


def with_cols(*cols: Column, key: tuple[str, ...] = ("id",)) -> Table:
    return Table("t", cols, key)


def test_add_in_the_middle_drop_and_rename() -> None:
    new = with_cols(col("id", "int", False), col("x", "datetime(3)"), col("a2", "int"))
    p = plan("staging", BASE, new, "ALTER TABLE t ADD COLUMN x DATETIME(3) AFTER id, DROP COLUMN b,"
                                   " RENAME COLUMN a TO a2")
    assert p.stop is None and p.added == ["x"]
    assert p.statements == ['ALTER TABLE "staging"."t" RENAME COLUMN "a" TO "a2"',
                            'ALTER TABLE "staging"."t" DROP COLUMN "b"',
                            'ALTER TABLE "staging"."t" ADD COLUMN "x" timestamp(3)']


def test_change_column_is_a_rename_and_a_widening() -> None:
    new = with_cols(col("id", "int", False), col("big", "bigint"), col("b", "varchar(10)"))
    p = plan("staging", BASE, new, "ALTER TABLE t CHANGE COLUMN `a` `big` BIGINT")
    assert p.statements == ['ALTER TABLE "staging"."t" RENAME COLUMN "a" TO "big"',
                            'ALTER TABLE "staging"."t" ALTER COLUMN "big" TYPE bigint']


def test_narrowing_and_key_changes_stop_the_table() -> None:
    narrower = with_cols(col("id", "int", False), col("a", "smallint"), col("b", "varchar(10)"))
    assert "changed from int to smallint" in (plan("staging", BASE, narrower, "ALTER TABLE t MODIFY a SMALLINT").stop
                                              or "")
    other = with_cols(col("id", "int", False), col("a", "varchar(5)"), col("b", "varchar(10)"))
    assert "not by this statement" not in (plan("staging", BASE, other, "ALTER TABLE t MODIFY `a` VARCHAR(5)").stop
                                           or "not stopped")
    # read at an ALTER that doesn't name the column: the source's current definition, a later
    # statement's change (#30 item 8)
    later = plan("staging", BASE, with_cols(*other.columns, col("c", "int")), "ALTER TABLE t ADD COLUMN c INT").stop
    assert later and "changed from int to varchar(5)" in later and "not by this statement" in later
    assert "not by this statement" in (plan("staging", BASE, other, "ALTER TABLE t ADD aa INT, DROP b2").stop or "")
    rekeyed = with_cols(*BASE.columns, key=("id", "a"))
    assert "primary key changed" in (plan("staging", BASE, rekeyed, "ALTER TABLE t ...").stop or "")


def test_widening_rules() -> None:
    assert widens("integer", "bigint") and not widens("bigint", "integer")
    assert widens("numeric(10,2)", "numeric(12,2)") and widens("numeric(10,2)", "numeric(11,3)")
    assert not widens("numeric(10,2)", "numeric(10,3)") and not widens("numeric(10,2)", "numeric(12,1)")
    assert widens("integer", "numeric(12,2)") and not widens("integer", "numeric(11,2)")
    assert widens("timestamp(0)", "timestamp(6)") and not widens("timestamp(6)", "timestamp(3)")
    assert widens("real", "double precision") and not widens("double precision", "real")
    assert not widens("text", "integer")


def test_nullable_follows_and_varchar_lengths_are_all_text() -> None:
    new = with_cols(col("id", "int", False), col("a", "int"), col("b", "varchar(200)", nullable=True))
    assert plan("staging", BASE, new, "ALTER TABLE t MODIFY b VARCHAR(200)").statements == []
    looser = with_cols(col("id", "int", True), col("a", "int"), col("b", "varchar(10)"))
    assert plan("staging", BASE, looser, "").statements == ['ALTER TABLE "staging"."t" ALTER COLUMN "id" DROP NOT NULL']


def test_renames_with_spaces_in_names_are_not_parsed() -> None:
    assert renames("ALTER TABLE t RENAME COLUMN `a b` TO c") == {}  # spaces in names: not parsed, a drop + add
