"""A real PostgreSQL server for the tests: Debian's ``postgresql``, its own cluster in a
temporary directory, run as the ``postgres`` user, on a private loopback port, stopped by pid.

``.ci/run`` installs the package. Without it (or without root, which ``runuser`` needs) the
tests that ask for this server skip, saying why.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.cluster_fixture import free_port

__all__ = ["Postgres", "postgres_bin", "start_postgres", "why_no_postgres"]

USER = "postgres"


def postgres_bin() -> Path | None:
    """The newest installed server's bin directory (``/usr/lib/postgresql/<major>/bin``)."""
    root = Path("/usr/lib/postgresql")
    found = sorted((p for p in root.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name))
    return found[-1] if found else None


def why_no_postgres() -> str | None:
    if postgres_bin() is None:
        return "PostgreSQL is not installed (apt-get install postgresql; .ci/run does)"
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        return "starting PostgreSQL as its own user needs root and runuser"
    return None


@dataclass
class Postgres:
    base: Path
    port: int
    pid: int

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        self._as_user(str(postgres_bin() / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), name)
        return self.url(name)

    def stop(self) -> None:
        try:
            os.kill(self.pid, signal.SIGINT)  # PostgreSQL's "fast" shutdown
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(self.pid):
            time.sleep(0.2)
        if _alive(self.pid):
            os.killpg(os.getpgid(self.pid), signal.SIGKILL)  # pg_ctl made it a group leader
        shutil.rmtree(self.base, ignore_errors=True)

    def _as_user(self, *cmd: str) -> None:
        out = subprocess.run(["runuser", "-u", USER, "--", *cmd], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr.strip()}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def start_postgres() -> Postgres:
    """initdb (trust on loopback) and start a server in a fresh directory of its own (pytest's
    temporary folders sit below a root-only one the ``postgres`` user cannot enter)."""
    bin_dir = postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="edray-pg-"))
    shutil.chown(base, USER, USER)
    os.chmod(base, 0o700)
    data, port = base / "data", free_port()
    server = Postgres(base=base, port=port, pid=0)
    server._as_user(str(bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", USER, "--no-sync")
    server._as_user(str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "120",
                    "-o", f"-h 127.0.0.1 -p {port} -k {base}", "start")
    server.pid = int((data / "postmaster.pid").read_text().splitlines()[0])
    return server
