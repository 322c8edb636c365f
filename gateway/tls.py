"""TLS for the gateway's partner API: a server context from a certificate and key file.

Given ``tls_cert_file`` and ``tls_key_file`` (PEM; the certificate file may hold the chain),
the gateway serves HTTPS only, TLS 1.2 or newer. A missing, unreadable or mismatched pair is
refused at start with a :class:`ConfigError`. SIGHUP reloads the pair into the same context,
so a renewed certificate takes effect for new connections without a restart.
"""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

from node.errors import ConfigError

__all__ = ["load_tls_context", "reload_tls_context"]

log = logging.getLogger("baas.gateway.tls")


def _load_pair(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    for path, what in ((cert_file, "tls_cert_file"), (key_file, "tls_key_file")):
        if not path.is_file():
            raise ConfigError(f"gateway.{what}: {path} does not exist")
    try:
        context.load_cert_chain(certfile=str(cert_file), keyfile=str(key_file))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(
            f"gateway TLS: cannot load certificate {cert_file} with key {key_file}: {exc}"
        ) from exc


def load_tls_context(cert_file: Path, key_file: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_pair(context, cert_file, key_file)
    return context


def reload_tls_context(context: ssl.SSLContext, cert_file: Path, key_file: Path) -> bool:
    """Load a renewed pair into ``context``; on failure keep serving the old one."""
    try:
        _load_pair(context, cert_file, key_file)
    except ConfigError as exc:
        log.error("TLS certificate reload refused, keeping the current one: %s", exc.detail)
        return False
    log.info("TLS certificate reloaded from %s", cert_file)
    return True
