"""
The benchmark's smoke mode: bench/run.py works end to end.

It measures nothing worth reading (seconds, not minutes, on a busy machine);
it proves that every target starts and every workload runs and reports.  No
timing is asserted.  PgBouncer and stunnel are required, as for the
benchmark itself: CI installs Debian's pgbouncer and stunnel4 packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TARGETS = ("native", "pgbouncer", "pgtls", "pgtls2", "pgtls-tls", "stunnel")
WORKLOADS = ("w1_c16", "w1_c1", "w2_connect", "w3_copy", "w4_idle")


def test_bench_smoke(tmp_path: Path) -> None:
    """
    ``bench/run.py --smoke`` exits 0, prints the table, and writes JSON with
    a positive median for every workload and target and a positive ratio to
    native PostgreSQL for each, and for W1-W3 the CPU per unit of work of
    the front end, the client and the machine.  W1 and W2 run in two slices
    and W3 twice, the targets taking turns.
    """
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--smoke",
            "--slices",
            "2",
            "--json",
            str(out),
        ],
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    document = json.loads(out.read_text())
    assert document["config"]["targets"] == list(TARGETS)
    assert document["config"]["slices"] == 2
    assert document["config"]["w3_runs"] == 2
    assert document["failures"] == []
    # The interpreter twistd ran on, whose build sets pgtls's speed.
    base = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
    assert document["versions"]["pgtls's python"].endswith(f"({base})")
    assert sorted(document["workloads"]) == sorted(WORKLOADS)
    assert len(document["rounds"]) == 1
    for workload in WORKLOADS:
        assert document["workloads"][workload]["label"] in result.stdout
        for target in TARGETS:
            stats = document["summary"][workload][target]
            assert stats["rounds"] == 1, (workload, target)
            if workload == "w4_idle":
                # 20 sessions in a fresh process may fit in memory freed at
                # start-up: growth can be 0, never negative.
                assert stats["median"] >= 0, (workload, target, stats)
            else:
                assert stats["median"] > 0, (workload, target, stats)
                assert stats["ratio"]["median"] > 0, (workload, target, stats)
            assert document["rounds"][0]["results"][target][workload] == stats["median"]
            if workload != "w4_idle":
                cpu = document["rounds"][0]["details"][target][workload]
                assert cpu["cpu_s"] >= 0 and cpu["cpu_us_per_unit"] >= 0, (workload, target, cpu)
                # The clients ran, and the machine with them.
                assert cpu["client_us_per_unit"] > 0, (workload, target, cpu)
                assert cpu["machine_us_per_unit"] > 0, (workload, target, cpu)
                assert 0 <= cpu["idle_percent"] < 100, (workload, target, cpu)
                if workload != "w3_copy":
                    # The idle share is of the wall time the pgbench runs
                    # took (at least the duration), on every CPU.
                    wall = document["config"]["duration_s"] * document["host"]["cpus"]
                    assert cpu["machine_cpu_s"] >= wall, (workload, target, cpu)
                figures = document["cpu_summary"][workload][target]
                for figure in ("cpu_us_per_unit", "client_us_per_unit", "machine_us_per_unit"):
                    assert figures[figure]["median"] == cpu[figure], (workload, target, figure)
    assert "w4_idle" not in document["cpu_summary"]
    assert "CPU per unit of work" in result.stdout
    assert "machine idle (% of CPU time)" in result.stdout
    for target in TARGETS:
        assert document["tls"][target].startswith("protocol: TLS"), document["tls"]
