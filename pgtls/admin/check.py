"""
``pgtls check -D DIR``: load and validate everything the server would at
start, without listening, and say what was found.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from cryptography import x509

from pgtls.core import conf
from pgtls.server.listening import configured_listen_descriptions
from pgtls.server.loader import ServerConfig, load_server_config
from pgtls.server.upstreamcheck import probe_upstream
from pgtls.tls import channelbinding

__all__ = ["channel_binding_lines", "check_report"]


def check_report(
    data_directory: str,
    overrides: Mapping[str, str] | None = None,
    *,
    ask_passphrase: Callable[[str], str] | None = None,
    probe: bool = True,
) -> str:
    """
    The report of a successful check.

    :param probe: connect to the upstream and report how it answered (the
        certificate it presented, or why the leg failed) as warnings.

    :raises pgtls.server.loader.StartupError: what would stop the server from starting.
    """
    config = load_server_config(
        os.path.abspath(data_directory), overrides, ask_passphrase=ask_passphrase
    )
    # As the server does before it listens: a name that does not resolve.
    configured_listen_descriptions(config.settings)
    lines = ["settings:"]
    lines += [f"  {name} = {value}" for name, value in conf.describe(config.settings)]
    for notice in config.settings.notices:
        lines.append(f"  note: {notice}")
    lines += _tls_lines(config)
    if not config.settings.upstream.uses_tls:
        # A Unix socket or sslmode=disable: never TLS (as in libpq).
        lines += channel_binding_lines(config, None)
    lines.append(f"pg_hba.conf: {len(config.rules)} rule(s)")
    lines += [f"  warning: {warning}" for warning in config.rules.warnings]
    if probe:
        # A warning at most: the upstream may start later than pgtls.
        lines += probe_upstream(
            config.settings.upstream,
            config.upstream_tls,
            server_cert=config.tls.certificate if config.tls is not None else None,
        )
    lines.append("pgtls check: OK, the server would start")
    return "\n".join(lines) + "\n"


def _tls_lines(config: ServerConfig) -> list[str]:
    settings = config.settings
    if config.tls is None:
        return ["ssl: off (SSLRequest is answered N; direct SSL is refused)"]
    lines = ["ssl: on", f"  certificate: {settings.ssl_cert_file}"]
    # The certificate the server loaded; None if only OpenSSL's reader took it.
    cert = config.tls.certificate
    if cert is not None:
        try:
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = ", ".join(str(getattr(name, "value", name)) for name in names)
        except x509.ExtensionNotFound:
            sans = "(none)"
        lines += [
            f"    subject: {cert.subject.rfc4514_string()}",
            f"    names: {sans}",
            f"    valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC",
        ]
    lines.append(f"  key: {settings.ssl_key_file} (loaded, matches the certificate)")
    if config.tls.verify_clients:
        need = "required" if config.tls.require_client_cert else "optional (pg_hba.conf decides)"
        lines.append(
            f"  client certificates: requested, verified by {settings.ssl_ca_file}; {need}"
        )
        if os.path.exists(settings.ssl_crl_file):
            lines.append(f"  revocation list: {settings.ssl_crl_file}")
    else:
        lines.append("  client certificates: not requested (no root certificate file)")
    return lines


def channel_binding_lines(
    config: ServerConfig, upstream_cert: x509.Certificate | None
) -> list[str]:
    """
    What SCRAM channel binding does through pgtls (see
    pgtls.tls.channelbinding.report_lines).

    :param upstream_cert: the certificate the upstream presented on a TLS
        upstream leg; None when the leg is not TLS.
    """
    ours = config.tls.certificate if config.tls is not None else None
    return channelbinding.report_lines(ours, upstream_cert)
