"""HTTPS administration API of the callmanager (devices, lines, pools, resets, registry, CAPF,
cluster state, accounts, audit log).

Mount from the service:
    await ensure_admin_account(sessionmaker, data_dir)
    identity = service.admin_api_identity()          # issued by the runner, never by the service
    certfile, keyfile = ensure_https_certificate(data_dir, host, identity)
    app = create_admin_app(sessionmaker, events=BusEvents(service.publish), data_dir=data_dir,
                           capf_channel=lambda: service.peer_channel("capf", identity=identity),
                           ctl_channel=lambda: service.peer_channel("ctl-provider", identity=identity),
                           reset_tracker=service.callcontrol.registry)
    await serve_admin(app, host, port, certfile, keyfile)   # until cancelled
"""

from .app import OPENAPI_URL, create_admin_app
from .auth import create_account, ensure_admin_account
from .events import BusEvents, EventPublisher, MemoryEvents
from .https import AdminServer, ensure_https_certificate, serve_admin

__all__ = [
    "OPENAPI_URL", "AdminServer", "BusEvents", "EventPublisher", "MemoryEvents", "create_account",
    "create_admin_app", "ensure_admin_account", "ensure_https_certificate", "serve_admin",
]
