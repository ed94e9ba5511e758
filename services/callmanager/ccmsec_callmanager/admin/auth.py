"""Administration accounts and authentication.

Scheme (one check for every endpoint except POST /api/v1/login and the OpenAPI document): the
`Authorization` header carries either
  * `Bearer <token>` — from POST /api/v1/login; 32 random bytes, only their SHA-256 is stored,
    expires after `token_ttl` (8 h by default); POST /api/v1/logout revokes it; or
  * `Basic <user:password>` — what the CLI uses (one request per command, nothing to keep).
Passwords are stored only as argon2id hashes (argon2-cffi). Roles: `admin` may do everything,
`readonly` may only read (GET); a readonly user on a mutating endpoint gets 403.
Missing or bad credentials get 401; too many failures from one address — wrong passwords and
unknown or expired bearer tokens alike — get 429 for a while.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as _dt
import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBasic, HTTPBasicCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker

from ccmsec.db.admin import ROLES, AdminAccount, AdminToken
from ccmsec.db.devices import as_utc, utcnow
from ccmsec.fsutil import atomic_write

from .audit import new_entry
from . import schemas
from .errors import ApiError, body_schema, read_json
from .pagination import cursor_query, decode_cursor, limit_query, page
from ccmsec.textsafe import shown

ADMIN_USER = "admin"
PASSWORD_FILE = "admin-password"
DEFAULT_TOKEN_TTL = _dt.timedelta(hours=8)
USERNAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"
MIN_PASSWORD = 12
MAX_PASSWORD = 256
MAX_TOKEN = 128  # ours are 43 characters; a longer one is refused without a lookup

_hasher = PasswordHasher()  # argon2id with the library's RFC 9106 defaults
_dummy_hash: str | None = None


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def _verify_sync(stored_hash: str | None, password: str) -> bool:
    global _dummy_hash
    if stored_hash is None:
        # Unknown user: spend the same time as a real check so timing does not reveal names.
        _dummy_hash = _dummy_hash or _hasher.hash(secrets.token_urlsafe(16))
        stored_hash = _dummy_hash
        password = password + "\0"
    try:
        return _hasher.verify(stored_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def verify_password(stored_hash: str | None, password: str) -> bool:
    """argon2 costs tens of ms of CPU: run it off the event loop."""
    return await asyncio.to_thread(_verify_sync, stored_hash, password)


def token_digest(token: str) -> str:
    # The token is 256 random bits, so a plain SHA-256 is enough to make a stolen table useless.
    return hashlib.sha256(token.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Install-time account


def _write_once(path: Path, data: bytes) -> bool:
    """Create `path` (mode 0600) atomically unless it exists; True if we created it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    atomic_write(tmp, data, mode=0o600)
    try:
        os.link(tmp, path)  # unlike rename, link never replaces an existing file
        return True
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)


async def ensure_admin_account(sessionmaker: async_sessionmaker, data_dir: Path,
                               path: Path | None = None) -> Path:
    """Create the `admin` account on first start; its generated password goes to DATA/admin-password.

    The file is written once (mode 0600) and never rewritten: on later starts, or when the
    database is new but the file is still there, the password in the file is the one used.
    Returns the path of the password file (`path`, default DATA/admin-password).
    """
    path = Path(path) if path is not None else Path(data_dir) / PASSWORD_FILE
    if path.exists():
        os.chmod(path, 0o600)  # an operator may have loosened it; the content is never touched
    async with sessionmaker() as session:
        exists = await session.scalar(select(AdminAccount.id).where(AdminAccount.username == ADMIN_USER))
    if exists is not None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        _write_once(path, (secrets.token_urlsafe(18) + "\n").encode())
    password = path.read_text().rstrip("\r\n")
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"{path} holds a password shorter than {MIN_PASSWORD} characters; "
                         "remove the file to have a new one generated")
    pw_hash = await asyncio.to_thread(hash_password, password)
    try:
        async with sessionmaker() as session, session.begin():
            session.add(AdminAccount(username=ADMIN_USER, password_hash=pw_hash, role="admin"))
    except IntegrityError:
        pass  # another process created it at the same moment, from the same file
    return path


async def create_account(sessionmaker: async_sessionmaker, username: str, password: str,
                         role: str) -> AdminAccount:
    """Add an account (raises ValueError for a bad name, role or password, or a taken name)."""
    if not re.fullmatch(USERNAME_PATTERN, username):
        raise ValueError(f"bad user name '{shown(username)}' (letters, digits, '_', '.', '-'; 1-64)")
    if role not in ROLES:
        raise ValueError(f"unknown role '{shown(role)}' (one of {', '.join(ROLES)})")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters")
    account = AdminAccount(username=username, role=role,
                           password_hash=await asyncio.to_thread(hash_password, password))
    try:
        async with sessionmaker() as session, session.begin():
            session.add(account)
            await session.flush()
            session.expunge(account)  # usable after the session closes
    except IntegrityError:
        raise ValueError(f"account '{shown(username)}' already exists") from None
    return account


# ---------------------------------------------------------------------------------------------
# Per-request authentication


@dataclass(frozen=True)
class Principal:
    username: str
    role: str


class FailureThrottle:
    """Slows password guessing: after `limit` failures within `window` s an address gets 429."""

    def __init__(self, limit: int = 20, window: float = 60.0, max_addresses: int = 10_000):
        self.limit = limit
        self.window = window
        self.max_addresses = max_addresses
        self._failures: dict[str, collections.deque[float]] = {}

    def check(self, address: str) -> None:
        recent = self._recent(address)
        if recent is not None and len(recent) >= self.limit:
            raise ApiError(429, "too many failed authentications (passwords or tokens) from this "
                                "address; try again later")

    def failed(self, address: str) -> None:
        if len(self._failures) >= self.max_addresses:
            self._failures.clear()  # bounded memory beats perfect memory under a spray
        self._failures.setdefault(address, collections.deque(maxlen=self.limit)).append(
            time.monotonic())

    def _recent(self, address: str) -> collections.deque[float] | None:
        recent = self._failures.get(address)
        if recent is None:
            return None
        cutoff = time.monotonic() - self.window
        while recent and recent[0] < cutoff:
            recent.popleft()
        if not recent:
            del self._failures[address]
            return None
        return recent


_bearer = HTTPBearer(auto_error=False, description="token from POST /api/v1/login")
_basic = HTTPBasic(auto_error=False, description="user name and password (the CLI)")
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="ccmsec", Basic realm="ccmsec"'}


def _unauthenticated(message: str) -> ApiError:
    return ApiError(401, message, headers=_CHALLENGE)


async def _check_password(request: Request, username: str, password: str) -> AdminAccount:
    throttle: FailureThrottle = request.app.state.throttle
    address = request.client.host if request.client else "?"
    throttle.check(address)
    request.state.attempted_user = username[:64]
    if len(password) > MAX_PASSWORD or len(username) > 64:
        throttle.failed(address)
        raise _unauthenticated("wrong user name or password")
    async with request.app.state.sessionmaker() as session:
        account = await session.scalar(select(AdminAccount).where(AdminAccount.username == username))
    ok = await verify_password(account.password_hash if account else None, password)
    if not ok or account is None or account.disabled:
        throttle.failed(address)
        raise _unauthenticated("wrong user name or password")
    return account


async def authenticate(
    request: Request,
    bearer: HTTPAuthorizationCredentials | None = Security(_bearer),
    basic: HTTPBasicCredentials | None = Security(_basic),
) -> Principal:
    if bearer is not None:
        # Guessing tokens counts like guessing passwords: the same throttle per address.
        throttle: FailureThrottle = request.app.state.throttle
        address = request.client.host if request.client else "?"
        throttle.check(address)
        row = None
        if len(bearer.credentials) <= MAX_TOKEN:
            async with request.app.state.sessionmaker() as session:
                row = (await session.execute(
                    select(AdminToken.expires_at, AdminAccount)
                    .join(AdminAccount, AdminAccount.id == AdminToken.account_id)
                    .where(AdminToken.token_hash == token_digest(bearer.credentials))
                )).first()
        if row is None or as_utc(row[0]) <= utcnow() or row[1].disabled:
            throttle.failed(address)
            raise _unauthenticated("bearer token unknown or expired; log in again")
        account = row[1]
    elif basic is not None:
        account = await _check_password(request, basic.username, basic.password)
    else:
        raise _unauthenticated("authentication required (Basic or Bearer token from /api/v1/login)")
    principal = Principal(account.username, account.role)
    request.state.principal = principal
    return principal


async def require_user(principal: Principal = Depends(authenticate)) -> Principal:
    return principal


async def require_admin(principal: Principal = Depends(authenticate)) -> Principal:
    if principal.role != "admin":
        raise ApiError(403, f"user {principal.username!r} has role {principal.role!r}; "
                            "this action needs role 'admin'")
    return principal


# ---------------------------------------------------------------------------------------------
# Endpoints


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=MAX_PASSWORD)


class AccountCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    username: str = Field(pattern=f"^{USERNAME_PATTERN}$")
    password: str = Field(min_length=MIN_PASSWORD, max_length=MAX_PASSWORD)
    role: Literal["admin", "readonly"]


router = APIRouter(tags=["accounts"])


@router.post("/api/v1/login", name="login", openapi_extra=body_schema(LoginRequest),
             responses={200: {"model": schemas.LoginAnswer}})
async def login(request: Request) -> dict:
    """Exchange user name and password for a bearer token."""
    body = await read_json(request, LoginRequest)
    account = await _check_password(request, body.username, body.password)
    request.state.principal = Principal(account.username, account.role)
    token = secrets.token_urlsafe(32)
    expires = utcnow() + request.app.state.token_ttl
    async with request.app.state.sessionmaker() as session, session.begin():
        await session.execute(delete(AdminToken).where(AdminToken.expires_at < utcnow()))
        session.add(AdminToken(token_hash=token_digest(token), account_id=account.id,
                               expires_at=expires))
        session.add(new_entry(request, status=200, target=account.username))
    return {"token": token, "token_type": "bearer", "expires_at": expires.isoformat(),
            "username": account.username, "role": account.role}


@router.post("/api/v1/logout", name="logout", responses={200: {"model": schemas.LogoutAnswer}})
async def logout(request: Request, principal: Principal = Depends(authenticate),
                 bearer: HTTPAuthorizationCredentials | None = Security(_bearer)) -> dict:
    """Revoke the bearer token used for this request (no-op for Basic)."""
    async with request.app.state.sessionmaker() as session, session.begin():
        if bearer is not None:
            await session.execute(
                delete(AdminToken).where(AdminToken.token_hash == token_digest(bearer.credentials)))
        session.add(new_entry(request, status=200, target=principal.username))
    return {"logged_out": principal.username}


@router.get("/api/v1/whoami", name="whoami", responses={200: {"model": schemas.WhoAmI}})
async def whoami(principal: Principal = Depends(require_user)) -> dict:
    return {"username": principal.username, "role": principal.role}


@router.get("/api/v1/accounts", name="account.list", responses={200: {"model": schemas.AccountList}})
async def list_accounts(request: Request, _: Principal = Depends(require_admin),
                        limit: int = limit_query(), cursor: str | None = cursor_query()) -> dict:
    """By user name. Page with `cursor`."""
    after = decode_cursor(cursor, str)
    query = select(AdminAccount).order_by(AdminAccount.username).limit(limit + 1)
    if after is not None:
        query = query.where(AdminAccount.username > after[0])
    async with request.app.state.sessionmaker() as session:
        rows, next_cursor = page((await session.scalars(query)).all(), limit, lambda a: (a.username,))
    return {"accounts": [row.to_dict() for row in rows], "next_cursor": next_cursor}


@router.post("/api/v1/accounts", name="account.create", status_code=201,
             openapi_extra=body_schema(AccountCreate), responses={201: {"model": schemas.Account}})
async def add_account(request: Request, _: Principal = Depends(require_admin)) -> dict:
    body = await read_json(request, AccountCreate)
    request.state.audit_target = body.username
    pw_hash = await asyncio.to_thread(hash_password, body.password)
    account = AdminAccount(username=body.username, role=body.role, password_hash=pw_hash)
    try:
        async with request.app.state.sessionmaker() as session, session.begin():
            session.add(account)
            session.add(new_entry(request, status=201, detail=f"role={body.role}"))
            await session.flush()
            result = account.to_dict()
    except IntegrityError:
        raise ApiError(409, f"account '{shown(body.username)}' already exists") from None
    return result
