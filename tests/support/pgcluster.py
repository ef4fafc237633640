"""A PostgreSQL cluster of the test's own (initdb + pg_ctl in a temporary folder), which a test
may stop, start and restart under running servers.

PostgreSQL refuses to run as root: as root the cluster runs as the `postgres` system user
(through `runuser`), otherwise as the current user. The binaries come from `PG_BINDIR`, else
`pg_config --bindir`, else the newest /usr/lib/postgresql/*/bin. Anything missing fails the
test loudly (it is never skipped): CI must have what the test needs.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PORTS = range(16311, 16320)  # this test's own range, away from the shared services
CTL_TIMEOUT = 60  # seconds for pg_ctl to start or stop the cluster


def bindir() -> Path:
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if found.returncode == 0 and (Path(found.stdout.strip()) / "initdb").exists():
            return Path(found.stdout.strip())
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                      key=lambda p: int(Path(p).parts[-3]))
    if not versions:
        raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl): install them or set "
                           "PG_BINDIR")
    return Path(versions[-1]).parent


def free_port() -> int:
    for port in PORTS:
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {PORTS.start}-{PORTS.stop - 1} for the test cluster")


@dataclass
class Cluster:
    port: int
    data: Path
    log: Path
    bin: Path
    as_user: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://root@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        command = [*self.as_user, str(self.bin / "pg_ctl"), "-D", str(self.data), "-w",
                   "-t", str(CTL_TIMEOUT), "-l", str(self.log), *args]
        # The server must not inherit our pipes: it outlives pg_ctl.
        done = subprocess.run(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=CTL_TIMEOUT + 10)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl {' '.join(args)} failed:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""

    def start(self) -> None:
        self._ctl("-o", f"-p {self.port} -k {self.data.parent} -c listen_addresses=127.0.0.1 "
                        "-c fsync=off -c full_page_writes=off", "start")

    def stop(self) -> None:
        self._ctl("-m", "fast", "stop")

    def restart(self) -> None:
        """Every open connection is ended by the server (a fast shutdown), then it comes back
        on the same port."""
        self.stop()
        self.start()


@contextmanager
def pg_cluster() -> Iterator[Cluster]:
    """A running cluster with a `root` superuser (trust auth on loopback), stopped and removed
    on the way out."""
    binaries = bindir()
    as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_user and not shutil.which("runuser"):
        raise RuntimeError("running as root needs runuser to start PostgreSQL as 'postgres'")
    home = Path(tempfile.mkdtemp(prefix="stello-pg-"))
    if as_user:
        shutil.chown(home, user="postgres")
    cluster = Cluster(free_port(), home / "data", home / "postgresql.log", binaries, as_user)
    try:
        init = subprocess.run(
            [*as_user, str(binaries / "initdb"), "-D", str(cluster.data), "-A", "trust",
             "-U", "root", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True, timeout=120,
        )
        if init.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{init.stdout}\n{init.stderr}")
        cluster.start()
        yield cluster
    finally:
        if (cluster.data / "postmaster.pid").exists():
            subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(cluster.data), "-w",
                            "-m", "immediate", "stop"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(home, ignore_errors=True)
