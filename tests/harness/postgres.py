"""A throw-away PostgreSQL server for the tests and benches: Debian's postgresql package,
its own data directory (initdb) on a free 127.0.0.1 port, run as the `postgres` user."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid

from tests.harness.collector import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise AssertionError("PostgreSQL is not installed (apt-get install postgresql); "
                             "scripts/test.sh installs it")
    return found[-1]


class Postgres:
    def __init__(self, settings: dict[str, str] | None = None) -> None:
        """``settings``: server settings over the small test defaults (a bench passes a
        production configuration)."""
        self.settings = {"max_connections": "200", "shared_buffers": "128MB",
                         **(settings or {})}
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="opsagent-pg-")
        self.data = os.path.join(self.dir, "data")
        self.user = pwd.getpwnam("postgres")

    def _as_postgres(self, *argv: str) -> None:
        cmd = list(argv)
        if os.getuid() == 0:
            cmd = ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
                   "--init-groups", "--", *cmd]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if res.returncode:
            raise AssertionError(f"{argv[0]} failed: {res.stdout}{res.stderr}")

    def start(self) -> Postgres:
        os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self._as_postgres(_bin("initdb"), "-D", self.data, "-U", "postgres", "--auth=trust",
                          "-E", "UTF8", "--no-instructions")
        opts = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 " + " ".join(
            f"-c {k}={v}" for k, v in self.settings.items())
        self._as_postgres(_bin("pg_ctl"), "-D", self.data, "-l",
                          os.path.join(self.dir, "log"), "-o", opts, "-w", "start")
        return self

    def stop(self) -> None:
        try:
            self._as_postgres(_bin("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def pid(self) -> int:
        """The postmaster's process id."""
        with open(os.path.join(self.data, "postmaster.pid")) as f:
            return int(f.readline())

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh, empty database; its URL."""
        import psycopg

        name = "t" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # a generated name, never input
        return self.url(name)
