"""
pgtls benchmark: native PostgreSQL SSL, PgBouncer, pgtls and stunnel compared.

One PostgreSQL 15 cluster with a pgbench database, and in front of it, on
127.0.0.1: PostgreSQL itself with ``ssl = on``; PgBouncer in session mode
with TLS required from clients; pgtls; two pgtls processes sharing one port
(pgtls.so_reuseport, "pgtls2"); stunnel, a TLS relay written in C, for
reference.  The relays reach the cluster over its Unix socket, and all
present the same ECDSA P-256 certificate.
Each round runs every workload against every target in turn (see
workloads.py; W1 and W2 in slices, the targets taking turns); the table
gives medians over the rounds, min-max, and each target's ratio to native
PostgreSQL measured in the same round.

Run from the repository root with the project's virtualenv::

    .venv/bin/python bench/run.py [--rounds N] [--duration S] [--slices K] [--smoke]
        [--targets native,pgbouncer,pgtls,pgtls2,pgtls-tls,stunnel] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import operator
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from types import FrameType
from typing import Any

import report
import servers
import workloads
from report import WORKLOADS

REPO = Path(__file__).resolve().parents[1]
# pgtls-tls: pgtls whose upstream leg is TLS too (sslmode=verify-full to the
# cluster's TCP port), beside pgtls on the cluster's Unix socket.
TARGETS = ("native", "pgbouncer", "pgtls", "pgtls2", "pgtls-tls", "stunnel")
# The relays that are not this project's, each run from its Debian package.
_RELAYS = {relay.name: relay for relay in (servers.PgBouncer, servers.Stunnel)}

_FULL = {
    "rounds": 3,
    "duration": 10.0,
    "slices": 4,
    "scale": 10,
    "copy_rows": 1_000_000,
    "sessions": 1000,
}
# Proves the script works, in seconds: CI runs it, nobody reads its numbers.
_SMOKE = {
    "rounds": 1,
    "duration": 2.0,
    "slices": 1,
    "scale": 1,
    "copy_rows": 20_000,
    "sessions": 20,
}
# W1 and W2 run in slices, the targets taking turns: this machine's speed
# drifts within seconds, and a ratio is fair only when its two sides share it.
_SLICED = ("w1_c16", "w1_c1", "w2_connect")
# W3 runs its whole COPY this many times per target and round (once when
# --slices is 1), the targets taking turns, for the same reason.
_W3_RUNS = 2

# The CPU used by each W1-W3 measurement is reported per its workload's
# cpu_unit: the front end's (native's is the postmaster and its backends,
# which also run the queries; PgBouncer's and pgtls's their own process),
# the client's, and the whole machine's.
_CPU_KEYS = {w.key: w.cpu_unit for w in WORKLOADS if w.cpu_unit is not None}
_REAP_SECONDS = 0.2

# Per idle session: the client's socket here, the front end's client and
# upstream sockets (pgtls, PgBouncer inherit this limit).
_FDS_PER_SESSION = 2
_FD_MARGIN = 256


@dataclass(frozen=True, slots=True)
class Config:
    """What one run measures: the command line with the mode's defaults filled in."""

    rounds: int
    duration: float
    slices: int
    scale: int
    copy_rows: int
    sessions: int
    targets: tuple[str, ...]
    smoke: bool
    json_path: Path

    @property
    def w3_runs(self) -> int:
        """W3's runs per target and round."""
        return min(self.slices, _W3_RUNS)


def parse_args(argv: Sequence[str] | None) -> Config:
    """
    Parse the command line.

    :raises SystemExit: on bad arguments (argparse's usage message).
    """
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark pgtls against native PostgreSQL SSL and PgBouncer (loopback only).",
    )
    parser.add_argument("--rounds", type=int, help="rounds of every workload (default 3)")
    parser.add_argument(
        "--duration", type=float, help="seconds of pgbench per target (W1, W2; default 10)"
    )
    parser.add_argument(
        "--slices",
        type=int,
        help="W1, W2: each target's pgbench time in this many runs of whole "
        "seconds, the targets taking turns, every other turn in reverse order "
        f"(default 4); W3 runs {_W3_RUNS} times so, or once when this is 1",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a few seconds per target: 1 round, 2 s runs, pgbench scale 1, "
        "20 idle sessions; proves the script works, measures nothing",
    )
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated, in the order they run within a round (default %(default)s)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        help="results file (default bench/results/YYYYmmddTHHMMSSZ.json)",
    )
    parser.add_argument("--scale", type=int, help="pgbench scale factor (default 10)")
    parser.add_argument("--copy-rows", type=int, help="W3's rows of 1000 bytes (default 1000000)")
    parser.add_argument("--sessions", type=int, help="W4's idle sessions (default 1000)")
    args = parser.parse_args(argv)
    targets = tuple(name.strip() for name in args.targets.split(",") if name.strip())
    unknown = sorted(set(targets) - set(TARGETS))
    if unknown or not targets or len(set(targets)) != len(targets):
        parser.error(f"--targets: a list of distinct names among {', '.join(TARGETS)}")
    defaults = _SMOKE if args.smoke else _FULL
    values = {name: getattr(args, name) for name in defaults}
    values = {name: defaults[name] if v is None else v for name, v in values.items()}
    if min(values.values()) <= 0:
        parser.error(
            "--rounds, --duration, --slices, --scale, --copy-rows and --sessions must be positive"
        )
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Config(
        rounds=int(values["rounds"]),
        duration=float(values["duration"]),
        slices=int(values["slices"]),
        scale=int(values["scale"]),
        copy_rows=int(values["copy_rows"]),
        sessions=int(values["sessions"]),
        targets=targets,
        smoke=args.smoke,
        json_path=args.json or REPO / "bench" / "results" / f"{stamp}.json",
    )


def _say(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def _raise_fd_limit(sessions: int) -> None:
    """Raise the soft open-files limit to the hard one; children inherit it."""
    needed = sessions * _FDS_PER_SESSION + _FD_MARGIN
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise servers.BenchError(
            f"open files limit {hard} is below the {needed} that {sessions} idle "
            "sessions need: raise it (ulimit -n) or lower --sessions"
        )
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    # Unwind like Ctrl-C does, so every server is stopped on the way out.
    raise KeyboardInterrupt


def _version(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unknown"
    # stunnel says something else first: the version is the first line with a digit.
    text = done.stdout or done.stderr
    lines = [line for line in text.splitlines() if any(map(str.isdigit, line))]
    return lines[0].strip() if lines else "unknown"


class Bench:
    """The servers of one run, started on entry to :meth:`run` and stopped on its exit."""

    def __init__(self, config: Config, stack: contextlib.ExitStack, root: Path) -> None:
        """
        :param stack: where each started server registers its stop.
        :param root: a temporary directory for certificates and configuration.
        """
        self.config = config
        self.stack = stack
        self.root = root
        self.targets: dict[str, servers.Target] = {}
        self.versions: dict[str, str] = {}
        self.tls: dict[str, str] = {}
        self.rounds: list[dict[str, dict[str, float | None]]] = []
        self.details: list[dict[str, dict[str, Any]]] = []
        self.failures: list[str] = []
        self.started = datetime.datetime.now(datetime.UTC)
        self.load_before = os.getloadavg()

    # -- set-up -----------------------------------------------------------

    def start(self) -> None:
        """
        Start the cluster (creating the pgbench database) and the front ends.

        :raises servers.BenchError: when one cannot start.
        """
        config = self.config
        programs = {
            name: servers.find_program(_RELAYS[name].package)
            for name in config.targets
            if name in _RELAYS
        }
        pki, cert, key = servers.make_certificate(self.root / "pki")
        _say(f"starting PostgreSQL and creating a scale-{config.scale} pgbench database")
        self.postgres = servers.start_postgres(cert, key, config.scale)
        self.stack.callback(self.postgres.close)
        bindir = self.postgres.bindir
        self.versions["postgresql"] = _version([str(bindir / "postgres"), "--version"])
        self.versions["pgbench"] = _version([str(bindir / "pgbench"), "--version"])
        self.upstream_root: Callable[[], int] = lambda: servers.postmaster_pid(self.postgres)
        for name in config.targets:
            if name == "native":
                self.targets[name] = servers.Target(name, self.postgres.port, self.upstream_root)
            elif name in ("pgtls", "pgtls-tls"):
                self._start_pgtls(pki, name)
            elif name == "pgtls2":
                self._start_pgtls_pair(pki)
            else:
                self._start_relay(name, programs[name], cert, key)
        for name, target in self.targets.items():
            self.tls[name] = workloads.tls_description(bindir, target)
            _say(f"{name} on 127.0.0.1:{target.port}: {self.tls[name]}")

    def _start_relay(self, name: str, executable: str, cert: Path, key: Path) -> None:
        """PgBouncer or stunnel; a restart frees whatever a relay keeps after W4."""
        relay = _RELAYS[name](executable, self.root / name, self.postgres, cert, key)
        self.stack.callback(relay.stop)
        relay.start()
        self.versions[name] = _version([executable, relay.version_flag])
        self.targets[name] = servers.Target(
            name, relay.port, lambda: relay.pid, fresh=relay.restart, release=relay.restart
        )

    def _start_pgtls(self, pki: servers.Pki, name: str) -> None:
        upstream = None
        if name == "pgtls-tls":
            # The cluster's certificate is the bench CA's, for 127.0.0.1.
            upstream = (
                f"host=127.0.0.1 port={self.postgres.port} sslmode=verify-full "
                f"sslrootcert={pki.ca_file}"
            )
        pgtls = servers.start_pgtls(self.root / name, pki, self.postgres, upstream=upstream)
        self.stack.callback(pgtls.stop)
        self.versions["pgtls"] = _version(
            ["git", "-C", str(REPO), "describe", "--always", "--dirty"]
        )
        # twistd runs on this interpreter, whose build sets pgtls's speed.
        base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
        self.versions["pgtls's python"] = f"{platform.python_version()} ({base})"
        self.targets[name] = servers.Target(
            name,
            pgtls.port,
            lambda: servers.pgtls_pid(pgtls),
            fresh=lambda: servers.restart_pgtls(pgtls),
        )

    def _start_pgtls_pair(self, pki: servers.Pki) -> None:
        """Two pgtls processes sharing one port (pgtls.so_reuseport), counted together."""
        pair = servers.PgtlsPair(self.root / "pgtls2", pki, self.postgres)
        self.stack.callback(pair.stop)
        pair.start()
        self.targets["pgtls2"] = servers.Target(
            "pgtls2", pair.port, lambda: pair.pid, fresh=pair.restart
        )

    # -- rounds -----------------------------------------------------------

    def run(self) -> None:
        """Run every round: each workload against each target in turn."""
        for number in range(1, self.config.rounds + 1):
            values: dict[str, dict[str, float | None]] = {t: {} for t in self.targets}
            details: dict[str, dict[str, Any]] = {t: {} for t in self.targets}
            self.rounds.append(values)
            self.details.append(details)
            for workload in WORKLOADS:
                key = workload.key
                turns = self._turns(key)
                seconds = max(1, round(self.config.duration / turns))
                runs: dict[str, list[tuple[float, float] | None]] = {t: [] for t in self.targets}
                for turn in range(turns):
                    order = list(self.targets.items())
                    if turn % 2:
                        # Every other turn backwards: a steady drift of the
                        # machine's speed then favours no target.
                        order.reverse()
                    for name, target in order:
                        runs[name].append(self._measure(key, target, details[name], seconds))
                for name in self.targets:
                    value = self._combine(key, runs[name], seconds, details[name])
                    values[name][key] = value
                    shown = "FAILED" if value is None else f"{value:.2f} {workload.unit}"
                    cpu = details[name].get(key) if key in _CPU_KEYS else None
                    if value is not None and cpu is not None:
                        shown += (
                            f"; CPU per {_CPU_KEYS[key]}: front end "
                            f"{cpu['cpu_us_per_unit']:.0f} us, client "
                            f"{cpu['client_us_per_unit']:.0f} us, machine "
                            f"{cpu['machine_us_per_unit']:.0f} us, "
                            f"{cpu['idle_percent']:.0f} % idle"
                        )
                    _say(f"round {number}/{self.config.rounds} {key} {name}: {shown}")
            report.write_json(self.config.json_path, self.document())

    def _turns(self, key: str) -> int:
        """How many runs of ``key`` each target gets in a round."""
        if key in _SLICED:
            return self.config.slices
        if key == "w3_copy":
            return self.config.w3_runs
        return 1

    def _measure(
        self, key: str, target: servers.Target, details: dict[str, Any], seconds: int
    ) -> tuple[float, workloads.CpuClock | None] | None:
        """
        One run of ``key``: its value and the CPU it used (None for a
        workload whose CPU is not reported), or None if it failed.
        """
        try:
            if key not in _CPU_KEYS:
                return self._workload(key, target, details, seconds), None
            before = workloads.cpu_clock(target.root_pid())
            value = self._workload(key, target, details, seconds)
            after = workloads.cpu_clock(target.root_pid())
            # Native PostgreSQL's backends may still be ending: let them be
            # reaped, but count the machine's idle time only while it worked.
            time.sleep(_REAP_SECONDS)
            reaped = workloads.tree_cpu_seconds(target.root_pid())
            return value, replace(after, frontend=reaped) - before
        except servers.BenchError as e:
            self.failures.append(f"{key} {target.name}: {e}")
            _say(f"{key} {target.name} failed: {e}")
            return None

    def _combine(
        self,
        key: str,
        runs: Sequence[tuple[float, workloads.CpuClock | None] | None],
        seconds: int,
        details: dict[str, Any],
    ) -> float | None:
        """
        The value of a target's runs (their mean: the runs are equally long)
        and, in ``details``, the CPU they used per unit of work; None if a
        run failed.
        """
        done = [run for run in runs if run is not None]
        if not done or len(done) != len(runs):
            return None
        value = sum(v for v, _ in done) / len(done)
        used = [cpu for _, cpu in done if cpu is not None]
        if used:
            units = sum(self._units(key, v, seconds) for v, _ in done)
            total = functools.reduce(operator.add, used)
            details[key] = {
                "cpu_s": total.frontend,
                "cpu_us_per_unit": total.frontend * 1e6 / units,
                "client_us_per_unit": total.clients * 1e6 / units,
                "machine_us_per_unit": total.busy * 1e6 / units,
                "machine_cpu_s": total.elapsed,
                "idle_percent": 100 * total.idle_fraction,
            }
        return value

    def _units(self, key: str, value: float, seconds: int) -> float:
        """Transactions (W1, W2: rate times duration) or MB (W3) of one run."""
        if key == "w3_copy":
            return self.config.copy_rows * workloads.COPY_ROW_BYTES / 1e6
        return max(value * seconds, 1.0)

    def _workload(
        self, key: str, target: servers.Target, details: dict[str, Any], seconds: int
    ) -> float:
        bindir = self.postgres.bindir
        duration = float(seconds)
        if key == "w1_c16":
            return workloads.pgbench_rate(bindir, target, clients=16, jobs=2, duration=duration)
        if key == "w1_c1":
            return workloads.pgbench_rate(bindir, target, clients=1, jobs=1, duration=duration)
        if key == "w2_connect":
            return workloads.pgbench_rate(
                bindir,
                target,
                clients=workloads.W2_CLIENTS,
                jobs=workloads.W2_JOBS,
                duration=duration,
                connect=True,
            )
        if key == "w3_copy":
            return workloads.copy_rate(bindir, target, self.config.copy_rows)
        if key == "w4_idle":
            cost = workloads.idle_cost(target, self.config.sessions, self.upstream_root)
            details["w4_idle"] = asdict(cost)
            return cost.frontend_kib
        raise AssertionError(f"no workload {key}")

    # -- results ----------------------------------------------------------

    def document(self) -> dict[str, Any]:
        """Everything measured so far, as the JSON file holds it."""
        config = self.config
        targets = list(self.targets)
        return {
            "format": report.JSON_FORMAT,
            "started": self.started.isoformat(timespec="seconds"),
            "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "config": {
                "rounds": config.rounds,
                "duration_s": config.duration,
                "slices": config.slices,
                "w3_runs": config.w3_runs,
                "pgbench_scale": config.scale,
                "copy_rows": config.copy_rows,
                "idle_sessions": config.sessions,
                "smoke": config.smoke,
                "targets": targets,
            },
            "host": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_before": list(self.load_before),
                "load_after": list(os.getloadavg()),
            },
            "versions": self.versions,
            "tls": self.tls,
            "workloads": {
                w.key: {"label": w.label, "unit": w.unit, "higher_is_better": w.higher_is_better}
                for w in WORKLOADS
            },
            "rounds": [
                {"round": i + 1, "results": values, "details": details}
                for i, (values, details) in enumerate(zip(self.rounds, self.details, strict=True))
            ],
            "summary": report.summarize(self.rounds, targets),
            "cpu_summary": report.summarize_cpu(self.details, targets),
            "failures": self.failures,
        }

    def header(self) -> str:
        """What was measured, to print above the table."""
        config = self.config
        load = ", ".join(f"{x:.2f}" for x in self.load_before)
        load_now = ", ".join(f"{x:.2f}" for x in os.getloadavg())
        lines = [
            f"pgtls benchmark{' (smoke: numbers mean nothing)' if config.smoke else ''}: "
            f"{config.rounds} round(s), {config.duration:g} s pgbench runs "
            f"in {config.slices} slice(s), "
            f"pgbench scale {config.scale}, "
            f"W3 {config.w3_runs} run(s) of {config.copy_rows} rows, "
            f"W4 {config.sessions} idle sessions",
            f"{os.cpu_count()} CPUs, load average before: {load}; after: {load_now}",
            *(f"{name}: {version}" for name, version in self.versions.items()),
            *(f"TLS to {name}: {tls}" for name, tls in self.tls.items()),
            "W4 = growth of Pss_Anon + Pss_Shmem (/proc/PID/smaps_rollup: Pss without "
            "file-backed pages), summed over the front end's processes (native: postmaster "
            "and backends), per idle session",
        ]
        return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the benchmark; print the table; write the JSON.

    :returns: 0 when every measurement succeeded, 1 when one failed (the
        others are still reported), 2 when the set-up failed, 130 on Ctrl-C
        or SIGTERM.
    """
    config = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    begun = time.monotonic()
    try:
        _raise_fd_limit(config.sessions)
        with (
            tempfile.TemporaryDirectory(prefix="pgtls-bench-") as tmp,
            contextlib.ExitStack() as stack,
        ):
            # PgBouncer runs as the postgres user when we are root: let it in.
            Path(tmp).chmod(0o755)
            bench = Bench(config, stack, Path(tmp))
            bench.start()
            bench.run()
            _say("stopping the servers")
    except servers.BenchError as e:
        _say(str(e))
        return 2
    except KeyboardInterrupt:
        _say("interrupted; servers stopped")
        return 130
    document = bench.document()
    report.write_json(config.json_path, document)
    print(bench.header())
    print()
    print(report.format_table(document["summary"], list(bench.targets)))
    print()
    print(report.format_cpu_table(document["cpu_summary"], list(bench.targets)))
    print()
    print(f"JSON: {config.json_path}  ({time.monotonic() - begun:.0f} s)")
    for failure in bench.failures:
        print(f"FAILED: {failure}")
    return 1 if bench.failures else 0


if __name__ == "__main__":
    sys.exit(main())
