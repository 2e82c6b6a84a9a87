"""
The ``pgtls`` command: ``pgtls init`` writes a data directory, ``pgtls
client-cert`` issues client certificates, ``pgtls check`` validates a data
directory as the server would at start.  The work is done by
:mod:`pgtls.admin.initdir`; this module parses arguments and prints.

Every expected error prints one line, ``pgtls: reason``, on stderr and
exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

import pgtls
from pgtls.admin import initdir
from pgtls.server.loader import StartupError

__all__ = ["main"]

_DESCRIPTION = """\
pgtls is PostgreSQL's SSL front door as a server of its own: it listens for
plaintext and SSL PostgreSQL connections, admits them by pg_hba.conf and
relays them to an upstream PostgreSQL server.  It runs as "twistd pgtls -D DIR";
this command prepares its data directory DIR.
"""

_EPILOG = """\
examples:
  pgtls init /srv/pgtls
  pgtls init /srv/pgtls --client-ca && pgtls client-cert /srv/pgtls alice

"pgtls COMMAND --help" tells more about each command.
"""

_INIT_DESCRIPTION = """\
Write a new pgtls data directory DIR (created with mode 0700 if missing):

  postgresql.conf         ssl = on, your options, and every other setting
                          pgtls reads as a commented, explained example
  pg_hba.conf             admits SSL connections from any address with
                          "hostssl all all 0.0.0.0/0 scram-sha-256" (and ::/0):
                          pgtls admits, the upstream server checks the password;
                          connections without SSL are refused
  pg_ident.conf           user-name maps for client certificates (examples)
  ca.crt, ca.key          a new local certificate authority
  server.crt, server.key  a server certificate signed by ca.crt for the host
                          names (--hostname)
  root.crt                with --client-ca only: a copy of ca.crt, which makes
                          pgtls ask every SSL client for a certificate

Keys and configuration files get mode 0600.  If any of these files exists
already, nothing is written.  At the end pgtls init prints the psql command
that connects with sslmode=verify-full, checking the server's certificate
against ca.crt.
"""

_INIT_EPILOG = """\
examples:
  pgtls init /srv/pgtls
      certificate for this machine's name, localhost, 127.0.0.1 and ::1;
      relays to host=/var/run/postgresql port=5432
  pgtls init /srv/pgtls --hostname db.example.com --listen '*' \\
        --upstream 'host=/var/run/postgresql port=5433'
      serve clients on every address, as db.example.com
  pgtls init /srv/pgtls --port 6432 --upstream 'host=127.0.0.1 port=5432'
      in front of a PostgreSQL server on this machine's TCP port 5432
  pgtls init /srv/pgtls --client-ca && pgtls client-cert /srv/pgtls alice
      require client certificates, and issue one for user alice
"""

_CLIENT_CERT_DESCRIPTION = """\
Issue a client certificate for PostgreSQL user NAME (its Common Name is NAME),
signed by the certificate authority of data directory DIR (DIR/ca.crt and
DIR/ca.key, as "pgtls init" writes them).  It writes NAME.crt and NAME.key
(the key with mode 0600) in the current directory, or PREFIX.crt and
PREFIX.key with --out PREFIX (PREFIX/NAME.crt and PREFIX/NAME.key when PREFIX
is a directory), never over an existing file, and prints the sslcert=...
sslkey=... connection parameters to give psql.

pgtls asks clients for certificates when DIR/root.crt exists ("pgtls init
--client-ca" writes it).  pg_hba.conf's cert method and clientcert=verify-full
option compare the certificate's Common Name with the user name.
"""

_CLIENT_CERT_EPILOG = """\
examples:
  pgtls client-cert /srv/pgtls alice
      writes ./alice.crt and ./alice.key
  pgtls client-cert /srv/pgtls alice --out ~/.postgresql/postgresql
      libpq's default file names: psql then finds them without sslcert/sslkey
"""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one ``pgtls: ...`` line and exit 1."""

    def error(self, message: str) -> NoReturn:
        """Print ``message`` as pgtls's errors look and exit 1."""
        self.exit(1, f'pgtls: {message} (see "{self.prog} --help")\n')


def _port(text: str) -> int:
    """A TCP port number for argparse; anything else is a usage error."""
    try:
        port = int(text)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port {text!r} (1 to 65535)")
    return port


def _run_init(args: argparse.Namespace) -> str:
    options = initdir.InitOptions(
        hostnames=tuple(args.hostname),
        upstream=args.upstream,
        client_ca=args.client_ca,
        port=args.port,
        listen_addresses=args.listen,
    )
    return initdir.init_summary(initdir.init_data_directory(args.directory, options))


def _run_client_cert(args: argparse.Namespace) -> str:
    result = initdir.issue_client(args.directory, args.name, args.out)
    return initdir.client_cert_summary(result)


def _subparser(
    commands: argparse._SubParsersAction[_Parser],
    name: str,
    summary: str,
    description: str,
    epilog: str,
    run: Callable[[argparse.Namespace], str],
) -> _Parser:
    parser = commands.add_parser(
        name,
        help=summary,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run)
    return parser


def _add_init(commands: argparse._SubParsersAction[_Parser]) -> None:
    init = _subparser(
        commands,
        "init",
        "write a new data directory: configuration, CA and server certificate",
        _INIT_DESCRIPTION,
        _INIT_EPILOG,
        _run_init,
    )
    init.add_argument("directory", metavar="DIR", help="the data directory to write")
    init.add_argument(
        "--hostname",
        metavar="NAME",
        action="append",
        default=[],
        help="a host name or IP address clients connect to; repeat for more. The server"
        " certificate covers every NAME, and psql's line uses the first. Default: this"
        " machine's name, its fully qualified name, localhost, 127.0.0.1 and ::1",
    )
    init.add_argument(
        "--upstream",
        metavar="CONNINFO",
        help="where the PostgreSQL server is, as a libpq connection string"
        f" (pgtls.upstream; default {initdir.DEFAULT_UPSTREAM!r})",
    )
    init.add_argument(
        "--client-ca",
        action="store_true",
        help="also write root.crt, so that pgtls asks every SSL client for a certificate"
        ' signed by ca.crt (issue them with "pgtls client-cert")',
    )
    init.add_argument(
        "--port", metavar="N", type=_port, default=5432, help="TCP port (default 5432)"
    )
    init.add_argument(
        "--listen",
        metavar="ADDRESSES",
        default="localhost",
        help="listen_addresses: comma-separated host names and IP addresses, or '*' for"
        " all (default localhost)",
    )


def _add_client_cert(commands: argparse._SubParsersAction[_Parser]) -> None:
    client_cert = _subparser(
        commands,
        "client-cert",
        "issue a client certificate signed by a data directory's CA",
        _CLIENT_CERT_DESCRIPTION,
        _CLIENT_CERT_EPILOG,
        _run_client_cert,
    )
    client_cert.add_argument("directory", metavar="DIR", help="the data directory with the CA")
    client_cert.add_argument("name", metavar="NAME", help="the PostgreSQL user name")
    client_cert.add_argument(
        "--out",
        metavar="PREFIX",
        help="write PREFIX.crt and PREFIX.key (default: NAME.crt and NAME.key here)",
    )


_CHECK_DESCRIPTION = """\
Load and validate everything "twistd pgtls -D DIR" would at start: the
settings (postgresql.conf and -c overrides), server.crt and server.key
(permissions, passphrase, match), root.crt and root.crl, pg_hba.conf and
pg_ident.conf.  Print what was found and exit 0, or print the one line that
would stop the server and exit 1.  It does not listen on any port.
A passphrase-protected key is asked for on the terminal, or obtained with
ssl_passphrase_command.
"""

_CHECK_EPILOG = """\
examples:
  pgtls check -D /var/lib/pgtls
  pgtls check -D /var/lib/pgtls -c port=6432
"""


def _run_check(args: argparse.Namespace) -> str:
    from pgtls.admin.check import check_report
    from pgtls.tls.passphrase import terminal_passphrase

    overrides = dict(item.partition("=")[::2] for item in args.set)
    return check_report(args.pgdata, overrides, ask_passphrase=terminal_passphrase)


def _add_check(commands: argparse._SubParsersAction[_Parser]) -> None:
    check = _subparser(
        commands,
        "check",
        "check a data directory as the server would at start, without listening",
        _CHECK_DESCRIPTION,
        _CHECK_EPILOG,
        _run_check,
    )
    check.add_argument(
        "-D",
        "--pgdata",
        metavar="DIR",
        default=os.environ.get("PGDATA"),
        required="PGDATA" not in os.environ,
        help="the data directory (default: $PGDATA)",
    )
    check.add_argument(
        "-c",
        dest="set",
        metavar="NAME=VALUE",
        action="append",
        default=[],
        type=_assignment,
        help="a setting as twistd pgtls -c would give it (repeatable)",
    )


def _assignment(text: str) -> str:
    name, sep, _ = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, not {text!r}")
    return text


def _parser() -> _Parser:
    parser = _Parser(
        prog="pgtls",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"pgtls {pgtls.__version__}")
    commands = parser.add_subparsers(
        title="commands", metavar="COMMAND", dest="command", required=True
    )
    _add_init(commands)
    _add_client_cert(commands)
    _add_check(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Run the ``pgtls`` command with ``argv`` (default ``sys.argv[1:]``).

    :returns: the exit status: 0, or 1 after printing ``pgtls: reason`` on
        stderr.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:
        # --help, --version and usage errors: argparse has printed already.
        return e.code if isinstance(e.code, int) else 1
    try:
        text: str = args.run(args)
    except (initdir.InitError, StartupError) as e:
        # One line per error (several bad pg_hba.conf lines are each named).
        for line in str(e).split("\n"):
            print(f"pgtls: {line}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0
