"""``canaryctl``'s TLS options, for a daemon that serves https:// (its ``listen_tls``).

``--cacert FILE`` (``CANARYCTL_CACERT``): the CA certificate(s) the daemon's certificate chains
to, when it is not one the system trusts (a private CA, a self-signed certificate).
``--cert FILE`` / ``--key FILE`` (``CANARYCTL_CERT`` / ``CANARYCTL_KEY``): the client certificate
and its key, for a daemon with ``listen_tls.client_ca_file`` (mutual TLS); ``--key`` may be left
out when the key is in the certificate's file. Like ``--url`` and ``--token`` they may be given
before or after the command; an option given wins over its variable.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

from canaryd.ctl.client import TlsFiles

OPTIONS = (
    ("--cacert", "CANARYCTL_CACERT", "CA certificate(s) to trust for https:// (PEM)"),
    ("--cert", "CANARYCTL_CERT", "client certificate for mutual TLS (PEM)"),
    ("--key", "CANARYCTL_KEY", "the client certificate's key (PEM; default: in --cert)"),
)


def tls_options(parser: argparse.ArgumentParser, default: Callable[[Any], Any]) -> None:
    """Add the three options; ``default`` as ``main._connection_options`` gives it."""
    for flag, variable, text in OPTIONS:
        parser.add_argument(
            flag,
            default=default(os.environ.get(variable) or None),
            metavar="FILE",
            help=f"{text} (default: ${variable})",
        )


def tls_files(args: argparse.Namespace) -> TlsFiles | None:
    """The TLS files the command line and environment name (None: none named)."""
    files = TlsFiles(
        getattr(args, "cacert", None), getattr(args, "cert", None), getattr(args, "key", None)
    )
    return None if files == TlsFiles() else files
