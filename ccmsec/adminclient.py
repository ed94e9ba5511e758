"""HTTPS client of the callmanager administration API (used by the `ccmsec` CLI).

Where things come from, unless given explicitly:
  * URL: `admin_url` in DATA/run/endpoints.json (written by the local runner);
  * credentials: user `admin` with the password in DATA/admin-password (HTTP Basic);
  * server verification: DATA/pki/cluster-ca.crt when present, else the server's own
    DATA/callmanager/https.crt pinned as the only trust anchor (self-signed case).
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ccmsec.runtime.logs import REQUEST_ID_HEADER, current_trace_id
from ccmsec.domain import DeviceSecurityMode

# What the API accepts (the database module is the source of truth; a unit test keeps these equal
# — repeated here so the CLI starts without importing SQLAlchemy).
DEVICE_MODELS = ("7970", "7960", "7940", "7912", "7910", "7905G", "7902")
SECURITY_MODES = DeviceSecurityMode.choices()
HARDENING_FIELDS = ("web_access", "pc_port", "settings_access", "garp", "voice_vlan_access",
                    "span_to_pc_port")

DEFAULT_TIMEOUT = 10.0  # seconds per request; CCMSEC_ADMIN_TIMEOUT overrides it (slow links, loaded hosts)


def default_timeout() -> float:
    import os

    try:
        value = float(os.environ.get("CCMSEC_ADMIN_TIMEOUT", DEFAULT_TIMEOUT))
    except ValueError:
        raise AdminConfigError("CCMSEC_ADMIN_TIMEOUT must be a number of seconds") from None
    if not 0 < value <= 3600:
        raise AdminConfigError("CCMSEC_ADMIN_TIMEOUT must be between 0 and 3600 seconds")
    return value
MAX_ERROR_TEXT = 300
MAX_PAGES = 10_000  # lists are followed through their cursors, never forever


class AdminClientError(Exception):
    """Anything that went wrong talking to the API, as one line for the user."""


class AdminUnreachable(AdminClientError):
    pass


class AdminConfigError(AdminClientError):
    pass


class AdminApiError(AdminClientError):
    """The API answered with an error: HTTP status, its message and, for rule refusals, the rule ID."""

    def __init__(self, status: int, error: str, rule: str | None = None):
        self.status = status
        self.error = error
        self.rule = rule
        prefix = f"refused by {rule}: " if rule else ""
        super().__init__(f"{prefix}{error} (HTTP {status})")


@dataclass
class AdminEndpoint:
    url: str
    username: str
    password: str
    cafile: Path


def _endpoints_url(data_dir: Path) -> str | None:
    path = data_dir / "run" / "endpoints.json"
    try:
        endpoints = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise AdminConfigError(f"cannot read {path}: {exc}") from None
    url = endpoints.get("admin_url") if isinstance(endpoints, dict) else None
    if url is not None and not isinstance(url, str):
        raise AdminConfigError(f"{path}: admin_url is not a string")
    return url


def trust_file(data_dir: Path) -> Path:
    ca = data_dir / "pki" / "cluster-ca.crt"
    return ca if ca.exists() else data_dir / "callmanager" / "https.crt"


def discover(data_dir: Path, *, url: str | None = None, username: str | None = None,
             password: str | None = None, cafile: Path | None = None) -> AdminEndpoint:
    """Fill in whatever was not given: from the named context in use (`ccmsec context use`,
    $CCMSEC_CONTEXT) unless --url is given, else from the cluster data directory."""
    data_dir = Path(data_dir)
    if url is None:
        from ccmsec import contexts

        try:
            ctx = contexts.active()
        except contexts.ContextError as exc:
            raise AdminConfigError(str(exc)) from None
        if ctx is not None:
            if password is None and username in (None, ctx.user):
                try:
                    password = ctx.password()
                except contexts.ContextError as exc:
                    raise AdminConfigError(str(exc)) from None
            return discover(data_dir, url=ctx.url, username=username or ctx.user, password=password,
                            cafile=cafile or ctx.cafile)
    url = url or _endpoints_url(data_dir)
    if not url:
        raise AdminConfigError(
            f"no administration API address: {data_dir}/run/endpoints.json has no admin_url "
            "(is the cluster running? or pass --url)")
    if not url.startswith("https://"):
        raise AdminConfigError(f"administration API URL must be https://, got {url!r}")
    import httpx  # here, not at the top: every `ccmsec` start imports this module (see AdminClient)

    try:
        httpx.URL(url)
    except (httpx.InvalidURL, UnicodeError) as exc:
        raise AdminConfigError(f"administration API URL {url!r} is not a valid URL: {exc}") from None
    if password is None:
        if username not in (None, "admin"):
            raise AdminConfigError(f"no password for user {username!r} (use --password-file)")
        pw_path = data_dir / "admin-password"
        try:
            password = pw_path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise AdminConfigError(
                f"cannot read {pw_path}: {exc.strerror} (use --user and --password-file)") from None
    cafile = Path(cafile) if cafile else trust_file(data_dir)
    if not cafile.exists():
        raise AdminConfigError(f"no certificate to verify the API with: {cafile} is missing")
    return AdminEndpoint(url.rstrip("/"), username or "admin", password, cafile)


def tls_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    # A pinned self-signed server certificate is a trust anchor of its own.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


class AdminClient:
    """Synchronous client; one method per API call, each returning the decoded JSON."""

    def __init__(self, endpoint: AdminEndpoint, timeout: float | None = None,
                 page_size: int | None = None):
        self.endpoint = endpoint
        self.page_size = page_size  # rows per page of a list (None: the server's default)
        timeout = default_timeout() if timeout is None else timeout
        try:
            verify = tls_context(endpoint.cafile)
        except (OSError, ssl.SSLError) as exc:
            raise AdminConfigError(f"cannot load {endpoint.cafile}: {exc}") from None
        # httpx is imported by the commands that call the API, not at the top: the command
        # imports this module at every start for its choices, and httpx (with the click and
        # pygments of its own command line) was a tenth of that start.
        import httpx

        self._http = httpx.Client(base_url=endpoint.url, verify=verify, timeout=timeout,
                                  auth=(endpoint.username, endpoint.password))

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, method: str, path: str, **kwargs) -> Any:
        import httpx  # already imported by __init__: a dictionary look-up

        try:
            trace = current_trace_id()  # the command's trace id: the API logs it (X-Request-Id)
            if trace:
                kwargs["headers"] = {**kwargs.get("headers", {}), REQUEST_ID_HEADER: trace}
            response = self._http.request(method, path, **kwargs)
        except httpx.ConnectError as exc:
            reason = str(exc) or type(exc).__name__
            if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate" in reason.lower():
                raise AdminUnreachable(
                    f"cannot verify the administration API at {self.endpoint.url} "
                    f"with {self.endpoint.cafile}: {reason}") from None
            raise AdminUnreachable(
                f"administration API unreachable at {self.endpoint.url}: {reason}") from None
        except httpx.TimeoutException:
            raise AdminUnreachable(
                f"administration API at {self.endpoint.url} did not answer in time") from None
        except httpx.HTTPError as exc:
            raise AdminUnreachable(
                f"administration API at {self.endpoint.url}: {type(exc).__name__}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 400:
            # RFC 9457 problem details (`detail`, `rule`); `error` from servers of the first version
            message = body.get("detail") or body.get("error") if isinstance(body, dict) else None
            if isinstance(message, str):
                raise AdminApiError(response.status_code, message[:MAX_ERROR_TEXT],
                                    body.get("rule") if isinstance(body.get("rule"), str) else None)
            raise AdminApiError(response.status_code, response.text[:MAX_ERROR_TEXT] or "no details")
        if body is None:
            raise AdminClientError(f"{method} {path}: the API answered with something that is not JSON")
        return body

    def _all(self, path: str, key: str, params: dict | None = None) -> list:
        """Every row of a list endpoint, following `next_cursor` page by page."""
        rows: list = []
        query = dict(params or {})
        if self.page_size:
            query["limit"] = self.page_size
        for _ in range(MAX_PAGES):
            answer = self._call("GET", path, params=query)
            rows += answer[key]
            cursor = answer.get("next_cursor")
            if not cursor:
                return rows
            query["cursor"] = cursor
        raise AdminClientError(f"GET {path}: more than {MAX_PAGES} pages")

    @staticmethod
    def _device_path(name: str) -> str:
        return f"/api/v1/devices/{quote(name, safe='')}"

    def whoami(self) -> dict:
        return self._call("GET", "/api/v1/whoami")

    def list_devices(self) -> list[dict]:
        return self._all("/api/v1/devices", "devices")

    def get_device(self, name: str) -> dict:
        return self._call("GET", self._device_path(name))

    def add_device(self, name: str, model: str, security_mode: str = DeviceSecurityMode.NON_SECURE,
                   **fields: Any) -> dict:
        return self._call("POST", "/api/v1/devices",
                          json={"name": name, "model": model, "security_mode": security_mode,
                                **fields})

    def update_device(self, name: str, **changes: Any) -> dict:
        return self._call("PATCH", self._device_path(name), json=changes)

    def remove_device(self, name: str) -> dict:
        return self._call("DELETE", self._device_path(name))

    def audit(self, limit: int = 100) -> list[dict]:
        return self._call("GET", "/api/v1/audit", params={"limit": limit})["entries"]

    # registry, resets -------------------------------------------------------------------------
    def registrations(self, device: str | None = None, node: str | None = None) -> list[dict]:
        params = {k: v for k, v in (("device", device), ("node", node)) if v}
        return self._all("/api/v1/registrations", "registrations", params)

    def calls(self, device: str | None = None) -> list[dict]:
        """Calls in progress on the call-control node and their security status (CALL-1)."""
        params = {"device": device} if device else {}
        return self._all("/api/v1/calls", "calls", params)

    def reset_device(self, name: str, kind: str = "reset") -> dict:
        """Reset (or with kind="restart", restart) one phone; the answer carries the request id."""
        return self._call("POST", self._device_path(name) + "/reset", json={"kind": kind})

    def reset_all(self, kind: str = "reset") -> dict:
        """CHK-13: every phone in the cluster."""
        return self._call("POST", "/api/v1/devices/reset", json={"all": True, "kind": kind})

    def reset_server(self, server: str, kind: str = "reset") -> dict:
        """RST-9: every phone registered to one call-control node."""
        return self._call("POST", "/api/v1/devices/reset", json={"server": server, "kind": kind})

    def reset_progress(self, request_id: str) -> dict:
        return self._call("GET", f"/api/v1/resets/{quote(request_id, safe='')}")

    # lines, device pools ----------------------------------------------------------------------
    def lines(self, device: str | None = None, dn: str | None = None) -> list[dict]:
        params = {k: v for k, v in (("device", device), ("dn", dn)) if v}
        return self._all("/api/v1/lines", "lines", params)

    def add_line(self, dn: str, device: str, line_index: int = 0, label: str = "") -> dict:
        return self._call("POST", "/api/v1/lines", json={"dn": dn, "device": device,
                                                         "line_index": line_index, "label": label})

    def pools(self) -> list[dict]:
        return self._all("/api/v1/pools", "pools")

    def add_pool(self, name: str, cm_group: list[str], srst: str = "") -> dict:
        return self._call("POST", "/api/v1/pools", json={"name": name, "cm_group": list(cm_group),
                                                         "srst": srst})

    def update_pool(self, name: str, **changes: Any) -> dict:
        """cm_group=[...] and/or srst="..." (a new SRST reference resets the pool's devices, RST-5)."""
        return self._call("PATCH", f"/api/v1/pools/{quote(name, safe='')}", json=changes)

    def set_device_pool(self, name: str, pool: str | None) -> dict:
        return self._call("PUT", self._device_path(name) + "/pool", json={"pool": pool})

    # softkey sets (issue 10) -----------------------------------------------------------------
    def softkey_sets(self) -> list[dict]:
        return self._all("/api/v1/softkey-sets", "softkey_sets")

    def set_softkeys(self, softkey_set: str, *, device: str = "", pool: str = "") -> dict:
        path = self._device_path(device) if device else f"/api/v1/pools/{quote(pool, safe='')}"
        return self._call("PUT", path + "/softkeys", json={"softkey_set": softkey_set})

    # SRST references (SRST-2, CERT-6) ---------------------------------------------------------
    def srst_references(self) -> list[dict]:
        return self._all("/api/v1/srst", "references")

    def srst_reference(self, name: str) -> dict:
        return self._call("GET", f"/api/v1/srst/{quote(name, safe='')}")

    def add_srst_reference(self, name: str, host: str, **ports: int) -> dict:
        return self._call("POST", "/api/v1/srst", json={"name": name, "host": host, **ports})

    def remove_srst_reference(self, name: str) -> dict:
        return self._call("DELETE", f"/api/v1/srst/{quote(name, safe='')}")

    def srst_security(self, name: str, secure: bool, accept_sha256: str = "") -> dict:
        """Fetch and store the router's certificate (secure=True) or remove it; the dependent
        devices are reset (RST-5). A changed certificate needs `accept_sha256` (CERT-6)."""
        body: dict[str, Any] = {"secure": secure}
        if accept_sha256:
            body["accept_sha256"] = accept_sha256
        return self._call("PUT", f"/api/v1/srst/{quote(name, safe='')}/security", json=body,
                          timeout=30.0)

    # cluster, CAPF ----------------------------------------------------------------------------
    def cluster(self) -> dict:
        return self._call("GET", "/api/v1/cluster")

    def capf_schedule(self, device: str, operation: str, auth_mode: str, *,
                      auth_string: str | None = None, key_type: str | None = None,
                      deadline: str | None = None) -> dict:
        """Schedule a CAPF operation; `deadline` is ISO 8601 with a time zone."""
        body = {"device": device, "operation": operation, "auth_mode": auth_mode}
        body.update({k: v for k, v in (("auth_string", auth_string), ("key_type", key_type),
                                       ("deadline", deadline)) if v is not None})
        return self._call("POST", "/api/v1/capf/operations", json=body)

    def capf_operations(self, device: str | None = None) -> list[dict]:
        params = {"device": device} if device else {}
        return self._all("/api/v1/capf/operations", "operations", params)

    def capf_log(self, device: str | None = None) -> list[dict]:
        params = {"device": device} if device else {}
        return self._all("/api/v1/capf/log", "entries", params)

    def capf_activate(self, active: bool = True) -> dict:
        """CHK-2: activate (or deactivate) CAPF on the publisher."""
        return self._call("POST", "/api/v1/capf/activation", json={"active": active})
