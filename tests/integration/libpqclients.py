"""
The two libpq clients the integration tests connect with, psql 15 and
psycopg, each run once with the same parameters and reporting what it saw
(an :class:`Outcome`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import psycopg

#: libpq's connect_timeout (seconds) for every client; PGCONNECT_TIMEOUT for psql.
CONNECT_TIMEOUT = 10
#: The longest a psql subprocess may run.
PROCESS_TIMEOUT = 30

# psql's \conninfo prints this line only for an SSL session.
_PSQL_SSL_LINE = "SSL connection (protocol: "


# -- the two clients -------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a libpq client saw when it connected and ran one query."""

    connected: bool
    ssl: bool = False
    value: str = ""
    error: str = ""


Runner = Callable[..., Outcome]


def _quote(value: str) -> str:
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def conninfo(params: Mapping[str, object]) -> str:
    """A libpq keyword/value connection string with a connect timeout."""
    params = {"connect_timeout": CONNECT_TIMEOUT, **params}
    return " ".join(f"{key}={_quote(str(value))}" for key, value in params.items())


def client_env(password: str | None = None) -> dict[str, str]:
    """
    psql's environment: the caller's PG* variables dropped (they would
    redirect or change the client), C messages, a connect timeout.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    env["PGCONNECT_TIMEOUT"] = str(CONNECT_TIMEOUT)
    if password is not None:
        env["PGPASSWORD"] = password
    return env


def psql_argv(params: Mapping[str, object], *commands: str) -> list[str]:
    """psql without psqlrc or password prompt, unaligned tuples, stop on error."""
    argv = ["psql", "--no-psqlrc", "--no-password", "-At", "-v", "ON_ERROR_STOP=1"]
    for command in commands:
        argv += ["-c", command]
    return [*argv, "-d", conninfo(params)]


def run_psql(
    params: Mapping[str, object], sql: str = "select current_user", *, password: str | None = None
) -> Outcome:
    """
    Connect with psql 15, run ``\\conninfo`` and ``sql`` (one value).

    :param password: given through PGPASSWORD.
    :raises subprocess.TimeoutExpired: psql ran longer than PROCESS_TIMEOUT.
    """
    done = subprocess.run(
        psql_argv(params, r"\conninfo", sql),
        env=client_env(password),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        return Outcome(connected=False, error=done.stderr.strip())
    lines = done.stdout.strip().splitlines()
    return Outcome(
        connected=True,
        ssl=any(line.startswith(_PSQL_SSL_LINE) for line in lines),
        value=lines[-1] if lines else "",
    )


def run_psycopg(
    params: Mapping[str, object], sql: str = "select current_user", *, password: str | None = None
) -> Outcome:
    """
    Connect with psycopg (libpq 17+) and run ``sql`` (one value).

    :param password: given as the ``password`` parameter.
    """
    if password is not None:
        params = {**params, "password": password}
    try:
        with psycopg.connect(conninfo(params)) as conn:
            row = conn.execute(sql).fetchone()
            return Outcome(
                connected=True,
                ssl=bool(conn.pgconn.ssl_in_use),
                value="" if row is None else str(row[0]),
            )
    except psycopg.OperationalError as error:
        return Outcome(connected=False, error=str(error))


RUNNERS: dict[str, Runner] = {"psql": run_psql, "psycopg": run_psycopg}
