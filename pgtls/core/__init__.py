"""
The sans-IO core: what a PostgreSQL connection and PostgreSQL's files say,
and what the front door does about it, without I/O.

The first packets of a connection (:mod:`~pgtls.core.wire`), the upstream's
side of a session's startup (:mod:`~pgtls.core.backendstart`), the
connection's policy as a state machine (:mod:`~pgtls.core.session`),
PostgreSQL's configuration files (:mod:`~pgtls.core.pgfiles`,
:mod:`~pgtls.core.conf`, the :mod:`~pgtls.core.hba` package) and libpq's
connection strings (:mod:`~pgtls.core.conninfo`).  Nothing here imports
Twisted or opens a socket (the one exception, named in its module, is
pg_hba.conf's host-name rules, which ask the resolver); tests drive it with
bytes and events.
"""
