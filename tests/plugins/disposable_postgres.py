"""A PostgreSQL server of a test's own, to stop and start again under running processes.

The server is the one the `pgserver` package ships (the embedded PostgreSQL of `make run`), in a
fresh data folder, on a unix socket in that folder. As root, pgserver runs it as its own system
user, so stop and start go through pg_ctl as the data folder's owner (pg_ctl refuses root).
`copy_of_test_database` fills a database with a copy of the test database (schema, migrations
and committed rows), so Gatehouse processes can run on it at once."""

import atexit
import contextlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from urllib.parse import quote

import psycopg
from django.db import connection

DATABASE = "drill"


class DisposablePostgres:
    def __init__(self):
        with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
            warnings.simplefilter("ignore")
            import pgserver
        self.bin = Path(pgserver.__file__).parent / "pginstall" / "bin"
        # Under /tmp, not pytest's 0700 folder: the server's own user must reach it.
        self.root = Path(tempfile.mkdtemp(prefix="gatehouse-drill-pg-"))
        self.root.chmod(0o755)
        self.data = self.root / "data"
        server = pgserver.get_server(self.data, cleanup_mode=None)
        atexit.unregister(server._cleanup)  # it only logs (cleanup_mode=None), after pytest closed the stream
        info = server.get_postmaster_info()
        self.socket_dir, self.port = str(info.socket_dir), info.port

    def _pg_ctl(self, *args: str) -> None:
        owner = self.data.stat().st_uid if os.geteuid() == 0 else None
        subprocess.run(  # noqa: S603
            [str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", *args], user=owner, check=True, capture_output=True
        )

    def start(self) -> "DisposablePostgres":
        log = str(self.data / "log")
        self._pg_ctl("-o", '-h ""', "-o", f"-k {self.socket_dir} -p {self.port}", "-l", log, "start")
        return self

    def stop(self) -> None:
        """Fast shutdown: open connections are cut, as in a crash or a failover."""
        self._pg_ctl("-m", "fast", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@:{self.port}/{database}?host={quote(self.socket_dir, safe='/')}"

    def connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url(), autocommit=True)

    def copy_of_test_database(self) -> None:
        """The test database as it stands (committed rows only) into DATABASE."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(f"CREATE DATABASE {DATABASE}")
        source = connection.settings_dict
        dump = [str(self.bin / "pg_dump"), "--no-owner", "--no-privileges", "-d", source["NAME"]]
        dump += ["-h", source["HOST"] or "127.0.0.1", "-p", str(source["PORT"] or 5432), "-U", source["USER"]]
        schema_and_rows = subprocess.run(  # noqa: S603
            dump, check=True, capture_output=True, env={**os.environ, "PGPASSWORD": source["PASSWORD"] or ""}
        ).stdout
        # Some distribution builds add column options a stock server does not know (pg_attver).
        schema_and_rows = b"\n".join(line for line in schema_and_rows.split(b"\n") if b"SET (pg_attver=" not in line)
        psql = [str(self.bin / "psql"), "-q", "-v", "ON_ERROR_STOP=1", self.url()]
        restore = subprocess.run(psql, input=schema_and_rows, capture_output=True)  # noqa: S603
        assert restore.returncode == 0, restore.stderr.decode()[-2000:]
