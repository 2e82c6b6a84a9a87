"""
One client connection, in Twisted: the front door, the upstream leg, and
the relay between them with its fast path.

:class:`~pgtls.relay.frontdoor.FrontDoor` drives the connection's policy
(:mod:`pgtls.core.session`), reading a PROXY protocol header first when a
balancer sends one (:mod:`~pgtls.relay.proxyheader`); what every connection
shares is its :mod:`~pgtls.relay.listener`, and what it logs and counts is
built by :mod:`~pgtls.relay.sessionlog` and :mod:`~pgtls.relay.counters`.
:mod:`~pgtls.relay.upstreamleg` opens the upstream leg, and
:mod:`~pgtls.relay.upstream` relays it with Twisted's flow control and
forwards cancel requests.  The fast path
(:mod:`~pgtls.relay.pump`, :mod:`~pgtls.relay.fastwrite`,
:mod:`~pgtls.relay.reactor`) is on when :mod:`~pgtls.relay.fastpath` says
so, after :mod:`~pgtls.relay.selftest` has proved at start the private
internals it uses (:mod:`pgtls._internals`).
"""
