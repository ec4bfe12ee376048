"""The systemd units in deploy/ pass `systemd-analyze verify` (where the machine has it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def verify(folder: Path, unit: str) -> str:
    """systemd-analyze's complaints (it exits 0 on many of them, so its output is the verdict)."""
    out = subprocess.run([str(ANALYZE), "verify", str(folder / unit)], capture_output=True, text=True, timeout=60)
    return (out.stdout + out.stderr).strip() + ("" if out.returncode == 0 else f"\nexit {out.returncode}")


def install(tmp_path: Path) -> Path:
    exe = Path(sys.executable).with_name("softcart-sync")
    for unit in [*DEPLOY.glob("*.service"), *DEPLOY.glob("*.timer")]:
        text = unit.read_text().replace("/opt/softcart-sync/bin/softcart-sync", str(exe))
        text = text.replace("/usr/bin/flock", shutil.which("flock") or "/usr/bin/flock")
        (tmp_path / unit.name).write_text(text)
    (tmp_path / "softcart-sync@sales.service").symlink_to(tmp_path / "softcart-sync@.service")
    (tmp_path / "softcart-sync-reconcile@sales.service").symlink_to(tmp_path / "softcart-sync-reconcile@.service")
    (tmp_path / "softcart-sync-reconcile@sales.timer").symlink_to(tmp_path / "softcart-sync-reconcile@.timer")
    return tmp_path


@needs_analyze
def test_units_verify_clean(tmp_path: Path) -> None:
    folder = install(tmp_path)
    assert verify(folder, "softcart-sync.service") == ""
    assert verify(folder, "softcart-sync@sales.service") == ""
    assert verify(folder, "softcart-sync-reconcile.timer") == ""
    assert verify(folder, "softcart-sync-reconcile.service") == ""
    assert verify(folder, "softcart-sync-reconcile@sales.timer") == ""
    assert verify(folder, "softcart-sync-reconcile@sales.service") == ""


@needs_analyze
def test_verify_does_catch_a_broken_unit(tmp_path: Path) -> None:
    folder = install(tmp_path)
    good = (folder / "softcart-sync.service").read_text()
    (folder / "broken.service").write_text(good.replace("Type=notify", "Type=bogus"))
    assert "bogus" in verify(folder, "broken.service")


def test_service_unit_is_hardened_and_notifies() -> None:
    text = (DEPLOY / "softcart-sync.service").read_text()
    for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "DynamicUser=yes", "StateDirectory=",
                 "ProtectSystem=strict", "NoNewPrivileges=yes", "LoadCredential=", "EnvironmentFile="):
        assert line in text, line


PROMETHEUS = DEPLOY.parent / "prometheus"
# deploy/bootstrap.sh puts promtool beside the venv's Python (out of Debian's prometheus package)
PROMTOOL = shutil.which("promtool", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed: run deploy/bootstrap.sh")
def test_alert_rules_check_and_their_tests_pass() -> None:
    check = subprocess.run([str(PROMTOOL), "check", "rules", "alerts.yml"], cwd=PROMETHEUS, capture_output=True,
                           text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([str(PROMTOOL), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS,
                           capture_output=True, text=True, timeout=60)
    assert tests.returncode == 0, tests.stdout + tests.stderr


def _metric_names(text: str) -> set[str]:
    import re

    return {m for m in re.findall(r"\b(softcart_[a-z_]+)", text)}


def test_alerts_and_dashboard_only_use_metrics_we_export() -> None:
    import json

    from cdc.metrics import Metrics
    from cdc.ops.reconcile_report import Report, TableReport, metrics_registry

    families = {fam.name for fam in Metrics().registry.collect()}
    report = Report(False, ("source",), [TableReport("source", "sales_data")])
    families |= {fam.name for fam in metrics_registry(report).collect()}
    exported = {f"{n}{suffix}" for n in families for suffix in ("", "_total", "_bucket", "_sum", "_count")}
    dashboard = (DEPLOY.parent / "grafana" / "softcart-sync-dashboard.json").read_text()
    json.loads(dashboard)
    used = _metric_names((PROMETHEUS / "alerts.yml").read_text()) | _metric_names(dashboard)
    assert used and used <= exported, used - exported


def test_cron_file_starts_the_reconcile_unit_which_runs_under_flock() -> None:
    # cron starts the same unit as the timer (its settings, credentials, user, spool, textfile), as
    # root, whom every host has (it used to name a user `softcart` that nothing creates)
    line = next(ln for ln in (DEPLOY.parent / "cron" / "softcart-sync").read_text().splitlines()
                if ln and not ln.startswith("#") and "=" not in ln.split()[0])
    fields = line.split()
    assert len(fields[:5]) == 5 and all(f.replace("*", "0").isdigit() for f in fields[:5]), "five time fields"
    assert fields[5:] == ["root", "systemctl", "start", "softcart-sync-reconcile.service"]
    unit = (DEPLOY / "softcart-sync-reconcile.service").read_text()
    assert "ExecStart=/usr/bin/flock --nonblock /run/lock/softcart-sync-reconcile.lock " in unit


def test_bootstrap_is_for_development_and_points_a_production_install_at_install_sh() -> None:
    out = subprocess.run(["bash", str(DEPLOY.parent / "bootstrap.sh"), "--no-test-tools"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "deploy/install.sh" in out.stderr
    install = subprocess.run(["bash", str(DEPLOY.parent / "install.sh"), "--help"], capture_output=True, text=True,
                             timeout=60)
    assert install.returncode == 0 and "/opt/softcart-sync" in install.stdout and "--instance" in install.stdout
