"""A throwaway PostgreSQL cluster from the machine's own binaries, for tests and benchmarks.

``initdb``/``pg_ctl`` refuse to run as root, so as root they run as the
``postgres`` user (Debian's packages create it).  The cluster lives in a temporary
directory, listens on 127.0.0.1 only, and is removed on stop.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


def find_bin_dir() -> Path | None:
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "initdb").exists():
            return Path(candidate)
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ThrowawayCluster:
    def __init__(self) -> None:
        self.bin_dir = find_bin_dir()
        self.port = _free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="gateway-pg-"))
        self.as_root = os.geteuid() == 0

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        cmd = list(args)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    def start(self) -> str:
        if self.bin_dir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb) on this machine")
        if self.as_root:
            shutil.chown(self.dir, "postgres", "postgres")
        data = self.dir / "data"
        self._run(str(self.bin_dir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C.UTF-8")
        options = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run(str(self.bin_dir / "pg_ctl"), "-D", str(data), "-o", options, "-w", "-l",
                  str(self.dir / "log"), "start")
        return self.url

    def stop(self) -> None:
        try:
            self._run(str(self.bin_dir / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        except Exception:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)


if __name__ == "__main__":  # used by .ci/run: `start` prints "URL DIR"; `stop DIR` ends it
    import sys

    if len(sys.argv) > 2 and sys.argv[1] == "stop":
        cluster = ThrowawayCluster()
        cluster.dir = Path(sys.argv[2])
        cluster.stop()
    else:
        cluster = ThrowawayCluster()
        print(cluster.start(), cluster.dir)
