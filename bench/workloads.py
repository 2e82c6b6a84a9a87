"""
The four workloads of the benchmark, each run against one target at a time.

- W1 query rate: ``pgbench -S`` on persistent connections, 16 clients and 1.
- W2 connection rate: ``pgbench -S -C``, a full TLS handshake and session
  start per transaction.
- W3 bulk: ``COPY (SELECT repeat('x',1000) ...) TO STDOUT`` through psql,
  written to /dev/null.
- W4 idle cost: the front end's memory per idle TLS session.

Clients are PostgreSQL 15's pgbench and psql (libpq 15), and psycopg for W4's
sessions; every one connects to 127.0.0.1 with ``sslmode=require``.
"""

from __future__ import annotations

import os
import re
import resource
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path

import psycopg
from servers import BENCH_DB, BENCH_USER, BenchError, Target, run_checked

__all__ = [
    "COPY_ROW_BYTES",
    "W2_CLIENTS",
    "CpuClock",
    "IdleCost",
    "Memory",
    "copy_rate",
    "cpu_clock",
    "idle_cost",
    "pgbench_rate",
    "tls_description",
    "tree_cpu_seconds",
    "tree_memory",
]

#: W2's concurrency: enough clients to keep both cores busy with handshakes.
W2_CLIENTS = 4
W2_JOBS = 2

#: repeat('x', 1000) and the newline COPY's text format ends each row with.
COPY_ROW_BYTES = 1001

#: Sessions opened and closed before W4's baseline, so that one-time costs
#: (lazy imports, first TLS context use, PgBouncer's first server connection)
#: are not charged to the measured sessions.
_WARMUP_SESSIONS = 3
#: Time for the measured sessions' memory to settle before reading it.
_SETTLE_SECONDS = 1.0
_DRAIN_TIMEOUT = 60.0
_STEADY_POLLS = 5
_CLIENT_TIMEOUT_MARGIN = 120.0

_TPS = re.compile(r"^tps = ([0-9.]+) ", re.MULTILINE)
_SSL_LINE = re.compile(r"^SSL connection \((.*)\)$", re.MULTILINE)


# -- W1, W2 ---------------------------------------------------------------


def pgbench_rate(
    bindir: Path,
    target: Target,
    *,
    clients: int,
    jobs: int,
    duration: float,
    connect: bool = False,
) -> float:
    """
    Run ``pgbench -n -S`` against ``target`` and return its tps.

    With ``connect`` (``-C``) every transaction opens its own connection, so
    the tps is the rate of full TLS session starts.

    :param bindir: PostgreSQL's bin directory (pgbench 15).
    :param clients: ``-c``; :param jobs: ``-j``; :param duration: ``-T``, s.
    :raises BenchError: when pgbench fails, times out or reports no tps.
    """
    argv = [
        str(bindir / "pgbench"),
        "--no-vacuum",
        "--select-only",
        f"--client={clients}",
        f"--jobs={jobs}",
        f"--time={max(1, round(duration))}",
        f"--host={target.host}",
        f"--port={target.port}",
        f"--username={BENCH_USER}",
    ]
    if connect:
        argv.append("--connect")
    argv.append(BENCH_DB)
    output = run_checked(argv, timeout=duration + _CLIENT_TIMEOUT_MARGIN)
    match = _TPS.search(output)
    if match is None or float(match.group(1)) <= 0:
        raise BenchError(f"pgbench reported no tps against {target.name}:\n{output}")
    return float(match.group(1))


# -- W3 -------------------------------------------------------------------


def copy_rate(bindir: Path, target: Target, rows: int) -> float:
    """
    Stream ``rows`` rows of 1000 bytes out of ``COPY ... TO STDOUT`` through
    psql and return the rate in MB/s (10^6 bytes), connection set-up included.

    psql's ``\\copy`` runs that COPY and writes what it receives to
    /dev/null, as ``psql -c "COPY ..." > /dev/null`` would: no process of
    the benchmark's own reads the 1 GB, so none competes for the CPUs with
    the server, the front end and psql (a pipe read here cost the relays a
    tenth or more of their rate on two CPUs).  psql then prints the
    server's row count (``COPY n``), which must be ``rows``; TLS's record
    checks stand for the bytes on the way.

    :raises BenchError: when psql fails, times out, or reports another row
        count.
    """
    query = f"SELECT repeat('x', 1000) FROM generate_series(1, {rows})"
    argv = [
        str(bindir / "psql"),
        "--no-psqlrc",
        "--set=ON_ERROR_STOP=1",
        f"--command=\\copy ({query}) TO '/dev/null'",
        target.conninfo(),
    ]
    start = time.perf_counter()
    # Generous: 1 GB at 10 MB/s would be far slower than any target should be.
    output = run_checked(argv, timeout=60.0 + rows * COPY_ROW_BYTES / 10e6).strip()
    elapsed = time.perf_counter() - start
    if output != f"COPY {rows}":
        raise BenchError(f"psql COPY against {target.name}: {output!r}, not COPY {rows}")
    return rows * COPY_ROW_BYTES / elapsed / 1e6


# -- W4 -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    """
    Memory of a process tree, from /proc/PID/smaps_rollup, in KiB.

    :param owned_kib: Pss of anonymous and shared memory (``Pss_Anon +
        Pss_Shmem``): what the processes allocated, each page divided among
        the processes mapping it.  File-backed pages (program and library
        code) are left out: they are no cost of a session, and their Pss
        changes whenever any other process maps or unmaps the same library.
    :param pss_kib: all of Pss, file-backed pages included.
    :param rss_kib: RSS, counting each shared page once per process.
    :param processes: how many processes were summed.
    """

    owned_kib: int
    pss_kib: int
    rss_kib: int
    processes: int


@dataclass(frozen=True, slots=True)
class IdleCost:
    """
    W4's result: memory per idle session, KiB.

    :param frontend_kib: the growth of the front end's ``Pss_Anon +
        Pss_Shmem`` per session: the headline number (see :class:`Memory`).
    :param frontend_pss_kib: the same with all of Pss.
    :param frontend_rss_kib: the same with RSS.
    :param upstream_kib: the upstream cluster's ``Pss_Anon + Pss_Shmem``
        growth per session (its backends) behind a relaying front end; None
        for native PostgreSQL, whose backends are the front end.
    """

    frontend_kib: float
    frontend_pss_kib: float
    frontend_rss_kib: float
    upstream_kib: float | None


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from /proc/*/stat."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _stat_fields(pid: str) -> list[str] | None:
    """
    /proc/PID/stat's fields after the command name (field 3 of proc(5)
    first), or None for a process that has exited.
    """
    try:
        stat = Path("/proc", pid, "stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold anything.
    return stat.rsplit(")", 1)[1].split()


@dataclass(frozen=True, slots=True)
class CpuClock:
    """
    CPU seconds (user + system) used so far, read by :func:`cpu_clock`;
    the difference of two readings is what a measurement used.

    :param frontend: the front end's process tree: its live processes and
        the children its root has reaped (native PostgreSQL's backends).
    :param clients: the client programs this process has run and reaped
        (pgbench, psql).
    :param busy: the whole machine's, every CPU (/proc/stat: user, nice,
        system, irq, softirq and steal).
    :param elapsed: the whole machine's CPU time, busy or idle: wall time
        times the number of CPUs online.
    """

    frontend: float
    clients: float
    busy: float
    elapsed: float

    def __add__(self, other: CpuClock) -> CpuClock:
        return CpuClock(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))

    def __sub__(self, earlier: CpuClock) -> CpuClock:
        return CpuClock(*(a - b for a, b in zip(astuple(self), astuple(earlier), strict=True)))

    @property
    def idle_fraction(self) -> float:
        """
        The share of the machine's CPU time nothing ran, from 0 (always busy)
        to 1 (0 when no time passed).

        busy is counted in whole clock ticks, each charged to what the CPU
        ran at the tick: a CPU busy all along may be charged up to a tick
        more than the wall time at each end of the interval.  Below 0 is
        that rounding: no CPU was idle.
        """
        if self.elapsed <= 0:
            return 0.0
        return max(0.0, 1.0 - self.busy / self.elapsed)


def cpu_clock(frontend_root: int) -> CpuClock:
    """Read the CPU clocks of :class:`CpuClock` now."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The first line sums every CPU: user nice system idle iowait irq softirq steal ...
    machine = [int(n) for n in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    now = time.monotonic()
    hertz = os.sysconf("SC_CLK_TCK")
    # The machine's time is the wall clock's, not the sum of /proc/stat's
    # fields: on a tickless kernel idle and iowait are computed at each read
    # and may go backwards between two reads (Linux's tick-sched.c says so:
    # nr_iowait is updated remotely without synchronization, and a reader
    # delayed between its clock read and the idle entry it reads gets a
    # negative delta).  That made a run's idle share negative on a loaded
    # machine.  The busy fields are charged at ticks and only ever grow.
    busy = sum(machine) - machine[3] - machine[4]
    return CpuClock(
        frontend=tree_cpu_seconds(frontend_root),
        clients=children.ru_utime + children.ru_stime,
        busy=busy / hertz,
        elapsed=now * (os.cpu_count() or 1),
    )


def tree_cpu_seconds(root: int) -> float:
    """
    CPU time (user + system) of ``root``'s process tree so far: its live
    processes, and the children ``root`` has already reaped (native
    PostgreSQL's backends that ended).
    """
    ticks = 0
    for pid in process_tree(root):
        fields = _stat_fields(str(pid))
        if fields is None:
            continue
        # utime, stime; for the root also cutime, cstime (proc(5): fields 14-17).
        ticks += int(fields[11]) + int(fields[12])
        if pid == root:
            ticks += int(fields[13]) + int(fields[14])
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_memory(root: int) -> Memory:
    """Memory summed over ``root``'s process tree (see :class:`Memory`)."""
    owned = pss = rss = count = 0
    for pid in process_tree(root):
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = dict(_smaps_field(line) for line in text.splitlines()[1:])
        # Linux before 5.9 has no Pss_Anon: then all of Pss.
        owned += fields["Pss_Anon"] + fields["Pss_Shmem"] if "Pss_Anon" in fields else fields["Pss"]
        pss += fields.get("Pss", 0)
        rss += fields.get("Rss", 0)
        count += 1
    return Memory(owned, pss, rss, count)


def _smaps_field(line: str) -> tuple[str, int]:
    name, _, value = line.partition(":")
    parts = value.split()
    return name, int(parts[0]) if parts and parts[0].isdigit() else 0


def idle_cost(target: Target, sessions: int, upstream_root: Callable[[], int]) -> IdleCost:
    """
    Open ``sessions`` TLS sessions to ``target``, run ``SELECT 1`` on each
    (so that every target holds an upstream backend per session, PgBouncer
    included) and leave them idle; return the front end's memory growth per
    session.

    The front end is made a fresh process first when it can be
    (``target.fresh``), so every round measures a process with the same
    history; after the sessions close, ``target.release`` frees what the
    front end keeps (PgBouncer's pooled server connections), and this waits
    for the cluster's backends to exit.

    :param upstream_root: the postmaster's process id.
    :raises BenchError: when a session cannot be opened or backends linger.
    """
    if target.fresh is not None:
        target.fresh()
    idle_processes = tree_memory(upstream_root()).processes
    _close_all([_open_session(target) for _ in range(_WARMUP_SESSIONS)])
    # PgBouncer keeps the warm-up's server connection pooled: wait for the
    # backends that do exit, not for the count before.
    _wait_steady(upstream_root)
    frontend_before = tree_memory(target.root_pid())
    upstream_before = tree_memory(upstream_root())
    connections: list[psycopg.Connection[tuple[object, ...]]] = []
    try:
        for _ in range(sessions):
            connections.append(_open_session(target))
        time.sleep(_SETTLE_SECONDS)
        frontend_after = tree_memory(target.root_pid())
        upstream_after = tree_memory(upstream_root())
    finally:
        _close_all(connections)
    if target.release is not None:
        target.release()
    _wait_drained(upstream_root, idle_processes)
    upstream = None
    if target.name != "native":
        upstream = (upstream_after.owned_kib - upstream_before.owned_kib) / sessions
    return IdleCost(
        frontend_kib=(frontend_after.owned_kib - frontend_before.owned_kib) / sessions,
        frontend_pss_kib=(frontend_after.pss_kib - frontend_before.pss_kib) / sessions,
        frontend_rss_kib=(frontend_after.rss_kib - frontend_before.rss_kib) / sessions,
        upstream_kib=upstream,
    )


def _open_session(target: Target) -> psycopg.Connection[tuple[object, ...]]:
    try:
        connection = psycopg.connect(target.conninfo(), autocommit=True)
    except psycopg.Error as e:
        raise BenchError(f"W4: cannot open a session to {target.name}: {e}") from None
    try:
        connection.execute("SELECT 1").fetchall()
        if not connection.pgconn.ssl_in_use:
            raise BenchError(f"W4: the session to {target.name} does not use TLS")
    except BaseException:
        connection.close()
        raise
    return connection


def _close_all(connections: list[psycopg.Connection[tuple[object, ...]]]) -> None:
    for connection in connections:
        connection.close()


def _wait_drained(upstream_root: Callable[[], int], processes: int) -> None:
    # Backends exit a moment after their client leaves; count processes
    # rather than sessions, since an exiting backend still holds memory.
    deadline = time.monotonic() + _DRAIN_TIMEOUT
    while tree_memory(upstream_root()).processes > processes:
        if time.monotonic() > deadline:
            raise BenchError(f"PostgreSQL backends still running after {_DRAIN_TIMEOUT:.0f} s")
        time.sleep(0.1)


def _wait_steady(upstream_root: Callable[[], int]) -> None:
    deadline = time.monotonic() + _DRAIN_TIMEOUT
    counts: list[int] = []
    while len(counts) < _STEADY_POLLS or len(set(counts[-_STEADY_POLLS:])) > 1:
        if time.monotonic() > deadline:
            raise BenchError(f"PostgreSQL backends still exiting after {_DRAIN_TIMEOUT:.0f} s")
        counts.append(tree_memory(upstream_root()).processes)
        time.sleep(0.1)


# -- TLS parameters -------------------------------------------------------


def tls_description(bindir: Path, target: Target) -> str:
    """
    What psql (libpq 15, as pgbench) negotiates with ``target``: the
    ``protocol: ..., cipher: ...`` of psql's ``\\conninfo``.

    :raises BenchError: when psql fails or the session is not TLS.
    """
    argv = [str(bindir / "psql"), "--no-psqlrc", "--command=\\conninfo", target.conninfo()]
    output = run_checked(argv, timeout=30)
    match = _SSL_LINE.search(output)
    if match is None:
        raise BenchError(f"psql's session to {target.name} is not TLS:\n{output}")
    return match.group(1)
