"""
Whether SCRAM channel binding can pass through pgtls, from two certificates.

SCRAM-SHA-256-PLUS binds the password exchange to ``tls-server-end-point``:
a hash of the server certificate the *client* saw, which through pgtls is
pgtls's own.  The upstream checks it against the certificate *it* presents,
and offers PLUS only on a TLS connection.  So:

- upstream leg without TLS: the upstream offers no PLUS; libpq's
  ``channel_binding=prefer`` works, ``require`` fails;
- upstream leg on TLS, another certificate than pgtls's: a client that binds
  is refused (``SCRAM channel binding check failed``), so SCRAM clients must
  use ``channel_binding=disable``;
- the same certificate (and so the same key) on both: the client's hash is
  the upstream's, and binding works end to end, ``require`` included.

:func:`end_point_hash` computes the hash as PostgreSQL does;
:func:`verdict` says which case holds, in a line for the log and for
``pgtls check``.  Nothing here touches a socket or imports Twisted.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding

from pgtls.core.backendstart import CHANNEL_BINDING_REMEDY

__all__ = ["Binding", "Verdict", "end_point_hash", "report_lines", "verdict"]


class Binding(enum.Enum):
    """What SCRAM channel binding does through pgtls."""

    #: Upstream leg without TLS: no PLUS offered; require fails, prefer works.
    NOT_OFFERED = "not_offered"
    #: The same certificate on both legs: binding passes.
    SHARED = "shared"
    #: Different certificates on a TLS upstream leg: binding clients are refused.
    DIFFERENT = "different"
    #: The same certificate, but signed without a hash (Ed25519, Ed448):
    #: PostgreSQL computes no tls-server-end-point data for it.
    NO_HASH = "no_hash"


@dataclass(frozen=True, slots=True)
class Verdict:
    """
    :ivar binding: the case.
    :ivar warning: whether SCRAM clients with libpq's defaults fail.
    :ivar text: one line, without a prefix, for the log or ``pgtls check``.
    """

    binding: Binding
    warning: bool
    text: str


def end_point_hash(cert: x509.Certificate) -> bytes | None:
    """
    The ``tls-server-end-point`` channel-binding data of ``cert`` as
    PostgreSQL computes it (be_tls_get_certificate_hash, RFC 5929): the
    certificate's DER hashed with its signature's hash algorithm, SHA-256
    when that is MD5 or SHA-1.

    :return: the hash, or None when the signature has no hash algorithm
        (Ed25519, Ed448) or an unknown one, where PostgreSQL fails.
    """
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm:
        return None
    if algorithm is None:
        return None
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert.public_bytes(Encoding.DER))
    return digest.finalize()


def verdict(ours: x509.Certificate, theirs: x509.Certificate | None) -> Verdict:
    """
    What SCRAM channel binding does for a client of pgtls on TLS.

    :param ours: the server certificate pgtls presents.
    :param theirs: the certificate the upstream presented on a TLS upstream
        leg, or None when the leg is not TLS.
    """
    if theirs is None:
        return Verdict(
            Binding.NOT_OFFERED,
            False,
            "the upstream leg is not TLS, so the upstream offers no SCRAM channel "
            "binding: clients' channel_binding=prefer (libpq's default) works, "
            "channel_binding=require fails",
        )
    if ours.public_bytes(Encoding.DER) != theirs.public_bytes(Encoding.DER):
        return Verdict(
            Binding.DIFFERENT,
            True,
            f"pgtls's certificate ({_names(ours)}) is not the one the upstream presents "
            f"({_names(theirs)}), so the upstream refuses SCRAM channel binding (libpq's "
            f"default channel_binding=prefer uses it): {CHANNEL_BINDING_REMEDY}",
        )
    if end_point_hash(ours) is None:
        return Verdict(
            Binding.NO_HASH,
            True,
            f"pgtls presents the upstream's own certificate ({_names(ours)}), but its "
            "signature has no hash for tls-server-end-point, so SCRAM channel binding "
            "fails: SCRAM clients must connect with channel_binding=disable",
        )
    return Verdict(
        Binding.SHARED,
        False,
        f"pgtls presents the upstream's own certificate ({_names(ours)}): SCRAM channel "
        "binding can pass end to end, channel_binding=require included",
    )


def report_lines(ours: x509.Certificate | None, theirs: x509.Certificate | None) -> list[str]:
    """
    ``pgtls check``'s lines on channel binding: a note, or a warning when
    SCRAM clients with libpq's defaults will be refused; none when pgtls
    has no certificate (no client of pgtls uses TLS, so none binds).

    :param ours: pgtls's server certificate, or None with ssl off.
    :param theirs: as for :func:`verdict`.
    """
    if ours is None:
        return []
    result = verdict(ours, theirs)
    return [f"  {'warning' if result.warning else 'note'}: channel binding: {result.text}"]


def _names(cert: x509.Certificate) -> str:
    """Subject and SHA-256 fingerprint: enough to tell two certificates apart."""
    fingerprint = cert.fingerprint(hashes.SHA256()).hex()
    return f"subject {cert.subject.rfc4514_string()}, SHA-256 {fingerprint[:16]}"
