from twisted.application.service import ServiceMaker

pgtls = ServiceMaker(
    "pgtls",
    "pgtls.server.tap",
    "PostgreSQL SSL front door: one port for plaintext and TLS, "
    "pg_hba.conf admission, relay to an upstream PostgreSQL server.",
    "pgtls",
)
