"""
``twistd pgtls``: the service around the front door.

:mod:`~pgtls.server.tap` is twistd's entry (the options and makeService);
:mod:`~pgtls.server.loader` reads and checks everything at start;
:mod:`~pgtls.server.listening` binds the ports; :mod:`~pgtls.server.shutdown`
and :mod:`~pgtls.server.handover` end the process as PostgreSQL does, or
hand its port to a new one (SIGUSR2); :mod:`~pgtls.server.sdnotify` tells
systemd; :mod:`~pgtls.server.metrics` serves the counters over HTTP;
:mod:`~pgtls.server.logs` writes JSON lines; :mod:`~pgtls.server.startprobe`
and :mod:`~pgtls.server.upstreamcheck` say at start what the upstream leg
will do.
"""
