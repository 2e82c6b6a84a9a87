"""
The benchmark's results: the workloads' names, the summary (median, min-max,
ratio to native PostgreSQL in the same round), the printed table and the JSON.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "BASELINE",
    "CPU_FIGURES",
    "JSON_FORMAT",
    "WORKLOADS",
    "Workload",
    "format_cpu_table",
    "format_table",
    "summarize",
    "summarize_cpu",
    "write_json",
]

#: The target every other one is compared with, round by round.
BASELINE = "native"
#: Bumped when the JSON's layout changes, so old files stay comparable.
JSON_FORMAT = 1

#: One round's results: target name -> workload key -> value (None: failed).
Round = Mapping[str, Mapping[str, float | None]]


@dataclass(frozen=True, slots=True)
class Workload:
    """
    One measured quantity.

    :param key: its name in the JSON.
    :param label: its row title in the table.
    :param unit: what the numbers count.
    :param higher_is_better: False for costs (W4's memory).
    :param cpu_unit: what CPU time is counted per (one transaction, one
        MB); None when the workload's CPU is not measured.
    """

    key: str
    label: str
    unit: str
    higher_is_better: bool = True
    cpu_unit: str | None = None


WORKLOADS = (
    Workload("w1_c16", "W1 query rate, pgbench -S -c 16 -j 2", "tps", cpu_unit="transaction"),
    Workload("w1_c1", "W1 query rate, pgbench -S -c 1", "tps", cpu_unit="transaction"),
    Workload(
        "w2_connect",
        "W2 connection rate, pgbench -S -C -c 4 -j 2",
        "connections/s",
        cpu_unit="connection",
    ),
    Workload(
        "w3_copy",
        "W3 bulk, COPY 1000-byte rows TO STDOUT, psql to /dev/null",
        "MB/s",
        cpu_unit="MB",
    ),
    Workload("w4_idle", "W4 idle session, front end's memory", "KiB/session", False),
)

#: The CPU figures kept per measured workload (rounds[].details[target][key]),
#: with their row titles: microseconds per unit of work, and a percentage.
CPU_FIGURES = (
    ("machine_us_per_unit", "machine, all processes (us)"),
    ("client_us_per_unit", "client (us)"),
    ("cpu_us_per_unit", "front end (us)"),
    ("idle_percent", "machine idle (% of CPU time)"),
)


def _spread(values: Sequence[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarize(
    rounds: Sequence[Round], targets: Sequence[str], workloads: Sequence[Workload] = WORKLOADS
) -> dict[str, dict[str, dict[str, Any]]]:
    """
    Median, min and max of each workload for each target over the rounds,
    and of its ratio to :data:`BASELINE` measured in the same round.

    :returns: ``{workload key: {target: {"rounds": n, "median", "min",
        "max", "ratio": {"median", "min", "max"} or None}}}``; a target
        whose every round failed has None for median, min and max.
    """
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for workload in workloads:
        per_target: dict[str, dict[str, Any]] = {}
        for target in targets:
            values = [v for r in rounds if (v := r.get(target, {}).get(workload.key)) is not None]
            ratios = [
                value / base
                for r in rounds
                if (value := r.get(target, {}).get(workload.key)) is not None
                and (base := r.get(BASELINE, {}).get(workload.key))
            ]
            spread: dict[str, float | None] = {"median": None, "min": None, "max": None}
            spread.update(_spread(values) or {})
            per_target[target] = {"rounds": len(values), **spread, "ratio": _spread(ratios)}
        summary[workload.key] = per_target
    return summary


def summarize_cpu(
    details: Sequence[Mapping[str, Mapping[str, Any]]],
    targets: Sequence[str],
    workloads: Sequence[Workload] = WORKLOADS,
) -> dict[str, dict[str, dict[str, dict[str, float] | None]]]:
    """
    Median, min and max over the rounds of each CPU figure
    (:data:`CPU_FIGURES`) of each measured workload and target.

    :param details: each round's ``details`` (target -> workload key -> figures).
    :returns: ``{workload key: {target: {figure: {"median", "min", "max"}
        or None}}}``, for the workloads with a ``cpu_unit``.
    """
    summary: dict[str, dict[str, dict[str, dict[str, float] | None]]] = {}
    for workload in workloads:
        if workload.cpu_unit is None:
            continue
        summary[workload.key] = {
            target: {
                figure: _spread(
                    [
                        value
                        for d in details
                        if (value := d.get(target, {}).get(workload.key, {}).get(figure))
                        is not None
                    ]
                )
                for figure, _ in CPU_FIGURES
            }
            for target in targets
        }
    return summary


def _number(value: float) -> str:
    # About three significant digits, without exponents.
    size = abs(value)
    if size >= 100:
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _cell(stats: Mapping[str, float] | None, prefix: str = "") -> str:
    if stats is None or stats["median"] is None:
        return "-"
    text = prefix + _number(stats["median"])
    low, high = _number(stats["min"]), _number(stats["max"])
    if low != high:
        text += f" ({low}-{high})"
    return text


def format_table(
    summary: Mapping[str, Mapping[str, Mapping[str, Any]]],
    targets: Sequence[str],
    workloads: Sequence[Workload] = WORKLOADS,
) -> str:
    """
    The summary as a text table: a row per workload with each target's
    median (min-max), and under it a row of ratios to native PostgreSQL.
    """
    rows = [["workload (unit)", *targets]]
    for workload in workloads:
        stats = summary[workload.key]
        better = "higher" if workload.higher_is_better else "lower"
        rows.append([f"{workload.label} ({workload.unit})", *(_cell(stats[t]) for t in targets)])
        if BASELINE in targets:
            rows.append(
                [
                    f"  ratio to {BASELINE} ({better} is better)",
                    *(_cell(stats[t]["ratio"], "x") for t in targets),
                ]
            )
    return _aligned(rows)


def format_cpu_table(
    cpu_summary: Mapping[str, Mapping[str, Mapping[str, Mapping[str, float] | None]]],
    targets: Sequence[str],
    workloads: Sequence[Workload] = WORKLOADS,
) -> str:
    """
    The CPU summary as a text table: for each measured workload, a row per
    figure of :data:`CPU_FIGURES` with each target's median (min-max).
    """
    rows = [["CPU per unit of work", *targets]]
    for workload in workloads:
        if workload.key not in cpu_summary:
            continue
        stats = cpu_summary[workload.key]
        rows.append([f"{workload.label}, per {workload.cpu_unit}", *([""] * len(targets))])
        for figure, title in CPU_FIGURES:
            rows.append([f"  {title}", *(_cell(stats[t][figure]) for t in targets)])
    return _aligned(rows)


def _aligned(rows: Sequence[Sequence[str]]) -> str:
    """Rows as columns padded to their widest cell, a rule under the first."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(line.rstrip() for line in lines)


def write_json(path: Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    os.replace(partial, path)
