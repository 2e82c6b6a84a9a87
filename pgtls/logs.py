"""
The name operators give twistd for JSON logs: ``twistd
--logger=pgtls.logs.json``.  The observer is :mod:`pgtls.server.logs`'s;
this short name stays as the one to write in a unit file.
"""

from pgtls.server.logs import json

__all__ = ["json"]
