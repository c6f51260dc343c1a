"""Database servers of a test's own: PostgreSQL (``initdb``, ``pg_ctl``) and MariaDB
(``mariadb-install-db``, ``mariadbd``), each in a folder of its own on a free port, so that a
test may stop and start them, or kill a connection, without touching the machine's servers."""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time

import sqlalchemy as sa

from .conftest import environment_lacks


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tool(name):
    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))), None)
    if found is None:
        environment_lacks(f"{name} is not installed")
    return found


class OwnServer:
    """A server of the test's own in a temporary folder (outside pytest's, which other users cannot
    enter); :meth:`stop` and :meth:`start` it, :meth:`close` removes it."""

    def __init__(self):
        self.folder = tempfile.mkdtemp(prefix=f"{self.kind}-", dir="/tmp")
        os.chmod(self.folder, 0o755)
        self.port = free_port()
        self.init()
        self.start()

    @property
    def url(self):
        raise NotImplementedError

    @property
    def probe_url(self):
        """A database that answers as soon as the server does."""
        return self.url

    def wait(self):
        engine = sa.create_engine(self.probe_url)
        for _ in range(300):
            try:
                with engine.connect():
                    return
            except sa.exc.OperationalError:
                time.sleep(0.1)
            finally:
                engine.dispose()
        raise RuntimeError(f"the {self.kind} server in {self.folder} did not start")

    def close(self):
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


class OwnPostgres(OwnServer):
    kind = "postgresql"

    def _as_postgres(self, *command):
        # PostgreSQL refuses to run as root
        prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        subprocess.run([*prefix, *command], check=True, capture_output=True, timeout=120)

    def init(self):
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
        self._as_postgres(_tool("initdb"), "-D", f"{self.folder}/data", "--auth=trust", "-U", "postgres")

    def start(self):
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1"
        self._as_postgres(
            _tool("pg_ctl"), "-D", f"{self.folder}/data", "-o", options, "-l", f"{self.folder}/log", "-w", "start"
        )
        self.wait()

    def stop(self):
        self._as_postgres(_tool("pg_ctl"), "-D", f"{self.folder}/data", "-m", "fast", "-w", "stop")

    @property
    def url(self):
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def kill(self, conn):
        """Terminate the server process of the SQLAlchemy connection ``conn``, from another connection."""
        pid = conn.connection.driver_connection.info.backend_pid
        engine = sa.create_engine(self.url)
        with engine.connect() as other:
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        engine.dispose()


class OwnMariaDB(OwnServer):
    kind = "mariadb"

    def init(self):
        tool = shutil.which("mariadb-install-db") or _tool("mysql_install_db")
        command = [tool, "--no-defaults", f"--datadir={self.folder}/data", "--auth-root-authentication-method=normal"]
        subprocess.run(
            [*command, "--skip-test-db", f"--user={os.environ.get('USER', 'root')}"],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self):
        server = shutil.which("mariadbd") or shutil.which("mysqld") or "/usr/sbin/mariadbd"
        self.process = subprocess.Popen(
            [
                server,
                "--no-defaults",
                f"--datadir={self.folder}/data",
                f"--port={self.port}",
                f"--socket={self.folder}/socket",
                "--bind-address=127.0.0.1",
                f"--pid-file={self.folder}/pid",
                f"--log-error={self.folder}/error.log",
                *(["--user=root"] if os.geteuid() == 0 else []),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.wait()
        engine = sa.create_engine(self.probe_url)
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE DATABASE IF NOT EXISTS test"))
        engine.dispose()

    @property
    def probe_url(self):
        return self.url.rsplit("/", 1)[0] + "/mysql"  # the test database is made once the server answers

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=60)

    @property
    def url(self):
        return f"mysql+pymysql://root@127.0.0.1:{self.port}/test"

    def kill(self, conn):
        """KILL the server thread of the SQLAlchemy connection ``conn``, from another connection."""
        thread = conn.connection.driver_connection.thread_id()
        engine = sa.create_engine(self.url)
        with engine.connect() as other:
            other.execute(sa.text(f"KILL {int(thread)}"))
        engine.dispose()


SERVERS = {"postgresql": OwnPostgres, "mariadb": OwnMariaDB}
