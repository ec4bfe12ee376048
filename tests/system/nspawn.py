"""A real, booted systemd for the operator's-path tests: a minimal Debian bookworm root made by
mmdebstrap (cached between runs), booted with systemd-nspawn, commands run inside with nsenter.

The container shares the host's network, so the servers the tests start on 127.0.0.1 are reachable
from inside it. mmdebstrap and systemd-nspawn are unpacked from Debian's packages into the cache
(`apt-get download` + `dpkg -x`), so the host's own systemd is left as it is. Root only.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tests.helpers import wait_until

CACHE = Path(os.environ.get("SOFTCART_TEST_CACHE", "/var/cache/softcart-sync-tests"))
#: What the container's root holds: a booting systemd with dynamic users, the Python a Debian host
#: has, sudo (the README's steps say sudo) and procps. python3-venv is left out: install.sh adds it.
PACKAGES = ("systemd", "systemd-sysv", "dbus", "libnss-systemd", "python3", "sudo", "procps", "ca-certificates")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
TOOL_PACKAGES = ("mmdebstrap", "systemd-container", "libsystemd-shared")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def why_not() -> str | None:
    """Why a booted container can't run here, or None."""
    if os.geteuid() != 0:
        return "booting a container needs root"
    for tool in ("apt-get", "dpkg", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if not Path("/etc/apt/sources.list.d/debian.sources").exists() and not Path("/etc/apt/sources.list").exists():
        return "no Debian apt source to build the container's root from"
    return None


def _run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    return out  # type: ignore[no-any-return]


def tools() -> Path:
    """mmdebstrap and systemd-nspawn unpacked into the cache (not installed on the host)."""
    version = _run(["dpkg-query", "-W", "-f", "${Version}", "systemd"]).stdout.strip()
    folder = CACHE / f"tools-{hashlib.sha256((version + str(TOOL_PACKAGES)).encode()).hexdigest()[:12]}"
    if (folder / "usr/bin/systemd-nspawn").exists():
        return folder
    work = Path(tempfile.mkdtemp(prefix="tools-", dir=_cache()))
    debs = work / "debs"
    debs.mkdir()
    _run(["apt-get", "download", *TOOL_PACKAGES], cwd=debs, timeout=300)
    for deb in debs.glob("*.deb"):
        _run(["dpkg", "-x", str(deb), str(work / "tree")])
    with contextlib.suppress(FileExistsError, OSError):
        (work / "tree").rename(folder)
    shutil.rmtree(work, ignore_errors=True)
    return folder


def _cache() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    return CACHE


def _env(tool_dir: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{tool_dir}/usr/bin:{os.environ.get('PATH', PATH)}",
            "LD_LIBRARY_PATH": f"{tool_dir}/usr/lib/x86_64-linux-gnu/systemd"}


def root(tool_dir: Path) -> Path:
    """The container's root (cached by package list; ~250 MB, ~25 s to make the first time)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if not sources.exists():
        sources = Path("/etc/apt/sources.list")
    ca = HOST_CA.read_text() if HOST_CA.exists() else ""
    key = hashlib.sha256((str(PACKAGES) + sources.read_text() + ca).encode()).hexdigest()[:12]
    folder = _cache() / f"root-{key}"
    if (folder / "usr/lib/systemd/systemd").exists():
        return folder
    work = Path(tempfile.mkdtemp(prefix="root-", dir=CACHE))
    tree = work / "tree"
    _run(["mmdebstrap", "--variant=apt", "--mode=root", f"--include={','.join(PACKAGES)}",
          '--aptopt=Acquire::Check-Valid-Until "false"', "bookworm", str(tree), str(sources)],
         env=_env(tool_dir), timeout=900)
    # Debian starts the servers it installs unless told not to: the container shares the host's
    # network, whose ports may be taken.
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 101\n")
    policy.chmod(0o755)
    (tree / "etc/hostname").write_text("softcart-test\n")
    with (tree / "etc/hosts").open("a") as hosts:
        hosts.write("127.0.1.1 softcart-test\n")
    # Package traffic here may go through a TLS-re-signing proxy the host trusts: the container
    # trusts what the host does (one file per certificate, as update-ca-certificates wants them).
    local = tree / "usr/local/share/ca-certificates/host"
    local.mkdir(parents=True, exist_ok=True)
    for n, cert in enumerate(re.findall(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", ca, re.S)):
        (local / f"{n:04d}.crt").write_text(cert + "\n")
    _run(["chroot", str(tree), "update-ca-certificates"], timeout=300)
    with contextlib.suppress(FileExistsError, OSError):
        tree.rename(folder)
    shutil.rmtree(work, ignore_errors=True)
    return folder


class Container:
    """One booted, ephemeral copy of the root: gone with everything in it when stopped."""

    def __init__(self, src: Path) -> None:
        self.src = src  # a writable copy of the project, seen inside as /src
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0  # the container's PID 1 (systemd), as the host sees it
        self.log = src.parent / "nspawn.log"

    def start(self, timeout: float = 120.0) -> None:
        tool_dir = tools()
        tree = root(tool_dir)
        propagate = Path("/run/systemd/nspawn/propagate")
        self._propagate_before = set(propagate.iterdir()) if propagate.exists() else set()
        cmd = [str(tool_dir / "usr/bin/systemd-nspawn"), "--boot", "--register=no", "--keep-unit",
               "--console=passive", "--timezone=off", "--ephemeral", f"--directory={tree}",
               f"--bind={self.src}:/src"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(cmd, env=_env(tool_dir), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

        def booted() -> bool:
            assert self.proc is not None
            assert self.proc.poll() is None, f"systemd-nspawn exited {self.proc.returncode}: {self.log.read_text()}"
            children = _children(self.proc.pid)
            if not children:
                return False
            self.pid = children[0]
            out = self.run("systemctl is-system-running --wait", check=False, timeout=timeout)
            return out.stdout.strip() in ("running", "degraded")

        wait_until(booted, timeout, "the container to boot")

    def run(self, script: str, *, env: dict[str, str] | None = None, check: bool = True,
            timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """bash -c SCRIPT inside the container, as root, with a clean environment."""
        assert self.pid, "not started"
        cmd = ["nsenter", "-t", str(self.pid), "-a", "env", "-i", f"PATH={PATH}", "HOME=/root", "LANG=C.UTF-8",
               *(f"{k}={v}" for k, v in (env or {}).items()), "bash", "-c", script]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
        if check and out.returncode != 0:
            # The end of stdout last: a report that keeps only the ends of a long message shows it.
            raise AssertionError(f"in the container: {script}\nexit {out.returncode}\n{out.stdout}\n{out.stderr}\n"
                                 f"the last lines of stdout:\n{out.stdout[-3000:]}")
        return out

    def stop(self, timeout: float = 60.0) -> None:
        """Shut the container down cleanly (SIGTERM makes nspawn ask systemd to power off)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self.proc = None
        propagate = Path("/run/systemd/nspawn/propagate")  # /run is no tmpfs here: nspawn leaves these
        if propagate.exists():
            for left in set(propagate.iterdir()) - self._propagate_before:
                shutil.rmtree(left, ignore_errors=True)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return sorted(found)


def project_copy(src: Path, dest: Path) -> Path:
    """The project's files as a clone holds them (tracked, or new and not ignored), copied to ``dest``."""
    files = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src).stdout.split("\0")
    for name in filter(None, files):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if (src / name).exists():
            shutil.copy2(src / name, target)
    return dest


@contextlib.contextmanager
def booted(src: Path, work: Path) -> Iterator[Container]:
    container = Container(project_copy(src, work / "src"))
    try:
        container.start()
        yield container
    finally:
        container.stop()

