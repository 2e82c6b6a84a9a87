"""
The relay's fast path: whether it is on (the self-test that decides is
:mod:`pgtls.relay.selftest`).

The fast path (:mod:`pgtls.relay.pump`, :mod:`pgtls.relay.fastwrite`'s sending at once
and its TLS set-up, :mod:`pgtls.relay.reactor`) rests on private internals
of Twisted and pyOpenSSL, all reached through :mod:`pgtls._internals`.  An
upgrade of either may change them; so ``twistd pgtls`` proves them once at
start, before it serves, with :func:`pgtls.relay.selftest.self_test`: a
real TLS handshake over a socketpair on a reactor of its own, then records
relayed both ways through the pump, checked byte for byte.  If anything fails, pgtls logs
one warning naming it and serves every session through Twisted's public
path (``transport.startTLS``, the relay's protocols with portforward-style
flow control, the stock epoll reactor): slower, never broken.

Operators and tests turn it off with ``pgtls.fast_path = off``
(postgresql.conf, restart only) or the environment variable
``PGTLS_FAST_PATH=off``, which wins over the file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.logger import Logger

__all__ = ["ENVIRONMENT", "from_environment", "on", "set_on", "start"]

#: The environment variable that turns the fast path on or off.
ENVIRONMENT = "PGTLS_FAST_PATH"
_WORDS = {"on": True, "true": True, "yes": True, "1": True}
_WORDS.update({"off": False, "false": False, "no": False, "0": False})

# On until the service decides (unit tests and embedders that never start
# the service keep it on).
_on = True
_log = Logger(namespace="pgtls.relay.fastpath")


def on() -> bool:
    """Whether the relay's fast path is in use."""
    return _on


def set_on(value: bool) -> None:
    """Turn the fast path on or off, for connections made from now on."""
    global _on
    _on = value


def from_environment(environ: Mapping[str, str]) -> bool | None:
    """
    The operator's choice in ``PGTLS_FAST_PATH``, None when unset.

    :raise ValueError: for a value that is not a boolean, with the message
        to show.
    """
    text = environ.get(ENVIRONMENT)
    if text is None:
        return None
    value = _WORDS.get(text.strip().lower())
    if value is None:
        raise ValueError(f'invalid value for environment variable {ENVIRONMENT}: "{text}"')
    return value


def start(setting: bool, environ: Mapping[str, str], test: Callable[[], str | None]) -> bool:
    """
    Decide, once at start, whether the fast path is used, and say so.

    :param setting: ``pgtls.fast_path`` from postgresql.conf.
    :param environ: the process's environment (``PGTLS_FAST_PATH`` wins).
    :param test: the self-test: None when the internals behave, else what failed.
    :return: whether it is on.
    :raise ValueError: for a bad ``PGTLS_FAST_PATH``.
    """
    chosen = from_environment(environ)
    if chosen is False or (chosen is None and not setting):
        where = f"{ENVIRONMENT}=off" if chosen is False else "pgtls.fast_path = off"
        _log.info("the relay's fast path is off ({where})", where=where)
        set_on(False)
        return False
    failure = test()
    if failure is not None:
        _log.warn(
            "the relay's fast path failed its self-test, so every session takes "
            "Twisted's public path (slower): {failure}",
            failure=failure,
        )
        set_on(False)
        return False
    set_on(True)
    return True
