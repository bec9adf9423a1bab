"""Bearer tokens: read-only or read-write, compared in constant time."""

import hashlib
import hmac

from flask import current_app, request

from .problems import Problem

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def parse_tokens(spec: str) -> list[tuple[bytes, bool]]:
    """"a,b:ro,c:rw" -> [(b"a", True), (b"b", False), (b"c", True)] (token, may write)."""
    tokens = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        token, _, mode = item.rpartition(":") if item.endswith((":ro", ":rw")) else (item, "", "rw")
        tokens.append((token.encode(), mode == "rw"))
    return tokens


def may_write(presented: str, tokens) -> bool | None:
    """None if the token is unknown, else whether it may write.

    Every configured token is compared, in constant time, as SHA-256 digests: how long the
    comparison takes tells neither which token matched nor how long the tokens are.
    """
    found = None
    candidate = hashlib.sha256(presented.encode("utf-8", "surrogatepass")).digest()
    for token, write in tokens:
        if hmac.compare_digest(candidate, hashlib.sha256(token).digest()):
            found = write
    return found


def token_from_request() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def require_token():
    """before_request for /api: 401 without a known token, 403 for a write with a read-only one."""
    tokens = current_app.config["INTERLOCK_TOKENS"]
    if not tokens:
        return
    presented = token_from_request()
    write = may_write(presented, tokens) if presented else None
    if write is None:
        raise Problem(401, "unauthorized", "Unauthorized", "send Authorization: Bearer <token>",
                      headers={"WWW-Authenticate": 'Bearer realm="interlock"'})
    if request.method not in SAFE_METHODS and not write:
        raise Problem(403, "forbidden", "Forbidden", "this token is read-only")
