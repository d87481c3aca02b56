"""Private servers for the fault scenarios that restart or fill one.

The shared Redis and PostgreSQL on the usual ports belong to everyone: a scenario that
restarts a server starts its own here, on a free port of 127.0.0.1, and stops it by PID.
  RedisServer          redis-server with no persistence (a restart loses every key)
  PostgresCluster      a throwaway cluster (initdb + pg_ctl) in a temp folder
  SizeLimitedFolder    a tmpfs (or loop-mounted ext4) folder of a few MB: real ENOSPC
"""
from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from tests.helpers import free_port, wait_until


def pid_alive(pid: int) -> bool:
    """Running (a zombie no one has reaped yet counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


class RedisServer:
    """redis-server on a free port, nothing saved: `restart()` comes back empty."""

    def __init__(self, workdir: Path, port: int | None = None):
        self.workdir, self.port = Path(workdir), port or free_port()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc and self.proc.poll() is None else None

    def start(self) -> "RedisServer":
        log = open(self.workdir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        wait_until(self.ping, 20, 0.05, f"redis-server on port {self.port}")
        return self

    def ping(self) -> bool:
        import redis

        assert self.proc.poll() is None, (self.workdir / "redis.log").read_text()[-2000:]
        try:
            return redis.Redis.from_url(self.url, socket_timeout=1).ping()
        except redis.RedisError:
            return False

    def dbsize(self) -> int:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=2).dbsize()

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop it by PID (SIGKILL by default: a crash, and with no persistence, a wipe)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, sig)
        self.proc.wait(15)

    def restart(self) -> "RedisServer":
        self.stop()
        return self.start()


def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise AssertionError("initdb not found under /usr/lib/postgresql/*/bin "
                             "(tests/apt-packages.txt lists postgresql)")
    return Path(found[-1]).parent


class PostgresCluster:
    """A private PostgreSQL cluster: initdb in a temp folder, pg_ctl on a free port.

    initdb refuses root, so as root the folder is given to the `postgres` user and the
    tools run as that user (runuser)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bin = _pg_bin()
        # its own temp folder: pytest's tmp_path is not readable by another user
        self.root = Path(tempfile.mkdtemp(prefix="gw-faults-pg-"))
        self.data, self.log = self.root / "data", self.root / "postgres.log"
        self.user = "postgres" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user, self.user)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                  "--no-sync", "-E", "UTF8")

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        cmd = [str(self.bin / tool), *args]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise AssertionError(f"{tool} failed ({done.returncode}): {done.stderr[-2000:]}")
        return done

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def database_url(self, name: str) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    @property
    def pid(self) -> int | None:
        """The postmaster's PID, from its pid file (first line)."""
        pidfile = self.data / "postmaster.pid"
        try:
            pid = int(pidfile.read_text().splitlines()[0])
        except (FileNotFoundError, IndexError, ValueError):
            return None
        return pid if pid_alive(pid) else None

    def start(self) -> "PostgresCluster":
        opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "start")
        wait_until(self.ready, 30, 0.1, f"PostgreSQL on port {self.port}")
        return self

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                                 dbname="postgres", connect_timeout=2) as conn:
                return conn.execute("select 1").fetchone() == (1,)
        except psycopg.OperationalError:
            return False

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                             dbname="postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.database_url(name)

    def stop(self, mode: str = "fast") -> None:
        """pg_ctl stop (`immediate` is a crash: no checkpoint, clients cut at once)."""
        if self.pid is None:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self, mode: str = "immediate") -> "PostgresCluster":
        self.stop(mode)
        return self.start()

    def destroy(self) -> None:
        pid = self.pid
        if pid is not None:
            try:
                self.stop("immediate")
            except AssertionError:
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.root, ignore_errors=True)


class SizeLimitedFolder:
    """A folder that really fills up: a tmpfs of `size_mb`, or, where mounting a tmpfs is
    refused, an ext4 image of that size mounted through a loop device. Writing past the
    size fails with ENOSPC from the kernel, as a full disk does."""

    def __init__(self, path: Path, size_mb: int = 4):
        self.path, self.size_mb = Path(path), size_mb
        self.kind: str | None = None
        self.image: Path | None = None

    def mount(self) -> "SizeLimitedFolder":
        self.path.mkdir(parents=True, exist_ok=True)
        tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={self.size_mb}m,mode=0700",
                                "tmpfs", str(self.path)], capture_output=True, text=True)
        if tmpfs.returncode == 0:
            self.kind = "tmpfs"
            return self
        self.image = self.path.with_name(self.path.name + ".ext4")
        with open(self.image, "wb") as f:
            f.truncate(self.size_mb * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, capture_output=True)
        loop = subprocess.run(["mount", "-o", "loop", str(self.image), str(self.path)],
                              capture_output=True, text=True)
        if loop.returncode != 0:
            raise AssertionError(f"cannot make a size-limited folder here: tmpfs: "
                                 f"{tmpfs.stderr.strip()}; loop ext4: {loop.stderr.strip()}")
        self.kind = "ext4-loop"
        return self

    def free_bytes(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave_bytes: int = 0) -> Path:
        """Take the free space, leaving about `leave_bytes`; returns the filler file."""
        filler = self.path / ".filler"
        with open(filler, "ab", buffering=0) as f:
            for size in (65536, 4096, 512, 1):  # the last bytes too: full means full
                while self.free_bytes() >= leave_bytes + size:
                    try:
                        f.write(b"\0" * size)
                    except OSError:
                        break
        return filler

    def make_room(self) -> None:
        (self.path / ".filler").unlink(missing_ok=True)

    def unmount(self) -> None:
        if self.kind is None:
            return
        for attempt in range(20):
            if subprocess.run(["umount", str(self.path)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)  # a process we stopped may still be closing its files
        else:
            subprocess.run(["umount", "-l", str(self.path)], capture_output=True)
        if self.image:
            self.image.unlink(missing_ok=True)
        self.kind = None

    def __enter__(self) -> "SizeLimitedFolder":
        return self.mount()

    def __exit__(self, *exc) -> None:
        self.unmount()
