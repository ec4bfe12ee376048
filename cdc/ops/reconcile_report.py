"""What a reconcile found and did: the report (text, JSON, exit code) and its metrics for
node_exporter's textfile collector or a Pushgateway."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, push_to_gateway, write_to_textfile

from cdc.settings import Settings


@dataclass
class TableReport:
    level: str
    table: str
    rows_origin: int = 0
    rows_copy: int = 0
    segments: int = 0
    differences: list[dict[str, Any]] = field(default_factory=list)
    repaired: int = 0
    unsettled: int = 0
    seconds: float = 0.0


@dataclass
class Report:
    dry_run: bool
    levels: tuple[str, ...]
    tables: list[TableReport] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        return sum(len(t.differences) for t in self.tables)

    @property
    def repaired(self) -> int:
        return sum(t.repaired for t in self.tables)

    @property
    def exit_code(self) -> int:
        """0 everything agreed, 1 drift found (repaired unless dry run), 2 could not complete."""
        return 2 if self.error else 1 if self.differences else 0

    def as_json(self) -> str:
        return json.dumps({**asdict(self), "exit_code": self.exit_code, "differences_found": self.differences,
                           "repaired_total": self.repaired}, default=str, indent=2)

    def text(self, shown: int = 20) -> str:
        rows = sum(max(t.rows_origin, t.rows_copy) for t in self.tables)
        verb = "would be repaired (dry run)" if self.dry_run else "repaired"
        lines = [f"reconcile: {len(self.tables)} table(s) on {len(self.levels)} level(s), {rows} rows compared in "
                 f"{self.seconds:.1f} s; {self.differences} difference(s) found, "
                 f"{self.differences if self.dry_run else self.repaired} {verb}"]
        w = max([16, *(len(t.table) for t in self.tables)])  # sales_by_month_product is 22 wide
        if self.tables:
            lines.append(f"  {'level':<10} {'table':<{w}} {'origin rows':>12} {'copy rows':>12} {'segments':>9}"
                         f" {'differ':>7} {'repaired':>9} {'unsettled':>10} {'seconds':>8}")
        for t in self.tables:
            lines.append(f"  {t.level:<10} {t.table:<{w}} {t.rows_origin:>12} {t.rows_copy:>12} {t.segments:>9}"
                         f" {len(t.differences):>7} {t.repaired:>9} {t.unsettled:>10} {t.seconds:>8.2f}")
        if any(t.rows_origin != t.rows_copy and not t.differences for t in self.tables):
            lines.append("  note: row counts that differ with 0 differences: each side was counted while changes went"
                         " on; a difference is a row that still differs when both sides are read at the same position")
        for t in self.tables:
            for d in t.differences[:shown]:
                lines.append(f"  {t.level} {t.table}: {d['kind']} key {d['key']}")
            if len(t.differences) > shown:
                lines.append(f"  {t.level} {t.table}: ... and {len(t.differences) - shown} more (see --json)")
        lines += [f"  note: {n}" for n in self.notes]
        if self.error:
            lines.append(f"could not complete: {self.error}")
        return "\n".join(lines)


def explain(level: str, kind: str) -> str:
    origin, copy = {"source": ("source", "staging"), "star": ("rebuild from staging", "star schema"),
                    "warehouse": ("star schema", "warehouse")}[level]
    return {"missing": f"in the {origin}, not in the {copy}", "extra": f"in the {copy}, not in the {origin}",
            "changed": f"differs between the {origin} and the {copy}"}[kind]


def metrics_registry(report: Report, pipeline: str = "default") -> CollectorRegistry:
    """The run's metrics (gauges: a cron job's last run, not counters of a process), labelled with
    the pipeline, so the textfiles of several instances on one host don't clash."""
    reg = CollectorRegistry()
    one = ("pipeline",)
    labels = ("pipeline", "level", "table")
    Gauge("softcart_reconcile_last_run_timestamp_seconds", "When the last reconcile finished", one,
          registry=reg).labels(pipeline).set(time.time())
    Gauge("softcart_reconcile_completed", "1 when the last reconcile completed, 0 when it could not", one,
          registry=reg).labels(pipeline).set(0 if report.error else 1)
    Gauge("softcart_reconcile_exit_code", "Exit code of the last reconcile (0 agreed, 1 drift, 2 incomplete)", one,
          registry=reg).labels(pipeline).set(report.exit_code)
    Gauge("softcart_reconcile_duration_seconds", "How long the last reconcile took", one,
          registry=reg).labels(pipeline).set(report.seconds)
    rows = Gauge("softcart_reconcile_rows", "Rows compared (the larger side)", labels, registry=reg)
    found = Gauge("softcart_reconcile_differences", "Differences found by the last reconcile", labels, registry=reg)
    fixed = Gauge("softcart_reconcile_repaired", "Rows repaired by the last reconcile", labels, registry=reg)
    moving = Gauge("softcart_reconcile_unsettled", "Keys that kept changing, left to the stream", labels,
                   registry=reg)
    for t in report.tables:
        rows.labels(pipeline, t.level, t.table).set(max(t.rows_origin, t.rows_copy))
        found.labels(pipeline, t.level, t.table).set(len(t.differences))
        fixed.labels(pipeline, t.level, t.table).set(t.repaired)
        moving.labels(pipeline, t.level, t.table).set(t.unsettled)
    return reg


def export_metrics(settings: Settings, report: Report) -> list[str]:
    """Write the run's metrics for node_exporter's textfile collector and/or push them to a
    Pushgateway, as configured; returns what went wrong (the run's exit code stays)."""
    if settings.reconcile_textfile is None and not settings.reconcile_pushgateway:
        return []
    reg = metrics_registry(report, settings.pipeline_name)
    problems = []
    if settings.reconcile_textfile is not None:
        try:
            write_to_textfile(str(settings.reconcile_textfile), reg)
        except OSError as exc:
            problems.append(f"could not write SOFTCART_RECONCILE_TEXTFILE {settings.reconcile_textfile}: {exc}")
    if settings.reconcile_pushgateway:
        try:
            push_to_gateway(settings.reconcile_pushgateway, job="softcart_reconcile", registry=reg,
                            grouping_key={"pipeline": settings.pipeline_name}, timeout=10)
        except OSError as exc:
            problems.append(f"could not push to SOFTCART_RECONCILE_PUSHGATEWAY: {exc}")
    return problems
