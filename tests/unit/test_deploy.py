"""The systemd units in deploy/ pass `systemd-analyze verify` (where the machine has it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")


def verify(folder: Path, unit: str) -> str:
    """systemd-analyze's complaints (it exits 0 on many of them, so its output is the verdict)."""
    out = subprocess.run([str(ANALYZE), "verify", str(folder / unit)], capture_output=True, text=True, timeout=60)
    return (out.stdout + out.stderr).strip() + ("" if out.returncode == 0 else f"\nexit {out.returncode}")


def install(tmp_path: Path) -> Path:
    exe = Path(sys.executable).with_name("softcart-sync")
    for unit in DEPLOY.glob("*.service"):
        text = unit.read_text().replace("/opt/softcart-sync/.venv/bin/softcart-sync", str(exe))
        (tmp_path / unit.name).write_text(text)
    (tmp_path / "softcart-sync@sales.service").symlink_to(tmp_path / "softcart-sync@.service")
    return tmp_path


def test_units_verify_clean(tmp_path: Path) -> None:
    folder = install(tmp_path)
    assert verify(folder, "softcart-sync.service") == ""
    assert verify(folder, "softcart-sync@sales.service") == ""


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
