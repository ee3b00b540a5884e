"""``sweep dashboard``: optuna-dashboard's live UI on a sweep's storage, served until Ctrl-C.

The dashboard reads the storage as Optuna's (sweep's tables are Optuna's RDB schema), so trials, their
curves, params and user attributes show as they are written. It is bound to 127.0.0.1 unless told
otherwise: it also edits (notes, deleting studies), and it has no login.
"""

from __future__ import annotations

import socket
import socketserver
from dataclasses import dataclass
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from sweep.service.common import ServiceError, open_read_only, resolve_study_name
from sweep.storage import mask_url

INSTALL_HINT = "pip install 'sweep[dashboard]'"


class _Server(socketserver.ThreadingMixIn, WSGIServer):
    """One thread per request: the page polls the API while a plot loads."""

    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """No line per request: the terminal keeps only the URL."""


@dataclass
class Dashboard:
    """A listening optuna-dashboard: ``serve`` until Ctrl-C, then ``close``."""

    url: str
    study: str | None
    storage: str  # the storage URL, password masked
    server: WSGIServer

    def serve(self) -> None:
        """Answer requests until interrupted (KeyboardInterrupt propagates to the caller)."""
        self.server.serve_forever()

    def close(self) -> None:
        self.server.server_close()


def start_dashboard(
    storage_url: str, study: str | None = None, *, host: str = "127.0.0.1", port: int = 8080
) -> Dashboard:
    """Listen on ``host:port`` (0: any free port) with optuna-dashboard on the storage; the URL opens
    ``study``'s page when one is named. Nothing is served until ``serve``."""
    try:
        import optuna_dashboard
    except ImportError:
        raise ServiceError(f"sweep dashboard needs optuna-dashboard: {INSTALL_HINT}") from None
    storage = open_read_only(storage_url)
    path = "/dashboard"
    if study is not None:
        study = resolve_study_name(storage, study, storage_url)
        path = f"/dashboard/studies/{storage.get_study_id_from_name(study)}"
    app = optuna_dashboard.wsgi(storage)
    server_class = _Server6 if ":" in host else _Server
    try:
        server = make_server(host, port, app, server_class=server_class, handler_class=_QuietHandler)
    except (OSError, OverflowError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ServiceError(f"--host {host} --port {port}: cannot listen there ({why}); pick another --port") from None
    shown = f"[{host}]" if ":" in host else host
    return Dashboard(f"http://{shown}:{server.server_port}{path}", study, mask_url(storage_url), server)
