"""
TLS: the server's context and the upstream leg's, how the upstream leg
negotiates as libpq does, and the names in certificates.

:mod:`~pgtls.tls.serverctx` builds the server context from the data
directory's files at start (a key's passphrase from
:mod:`~pgtls.tls.passphrase`), :mod:`~pgtls.tls.upstreamctx` the upstream
leg's from ``pgtls.upstream``, and :mod:`~pgtls.tls.negotiation` decides,
without I/O, how that leg opens (sslmode, SSLRequest or direct TLS, the
host name check of :mod:`~pgtls.tls.peername`).  :mod:`~pgtls.tls.dn`
prints names as PostgreSQL logs them, :mod:`~pgtls.tls.channelbinding`
compares two certificates for SCRAM channel binding, and
:mod:`~pgtls.tls.certs` makes certificates for ``pgtls init``, the tests and
the fast path's self-test.  Failures are :class:`~pgtls.tls.errors.TLSConfigError`.
"""
