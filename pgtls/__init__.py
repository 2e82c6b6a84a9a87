"""
pgtls: PostgreSQL's SSL front door as a server of its own.

It listens on one TCP port for plaintext and SSL PostgreSQL connections,
negotiates with each client exactly as the PostgreSQL server does, admits or
refuses the connection by pg_hba.conf rules, and relays each admitted session
to an upstream PostgreSQL server.
"""

__version__ = "0.1.0.dev0"
