"""Browser-facing protections of the API: the Host check against DNS rebinding, and the security
headers (Content-Security-Policy, frame, referrer and sniffing policies) on every answer.

Both are plain ASGI middleware, so they see every request before routing, including the ones
that end in 404 or 405.
"""
from __future__ import annotations

import json

# The page (myason/api/static) loads its one script and stylesheet from /static, calls the API
# on the same origin and has no inline code, so nothing else is allowed; the favicon is `data:,`.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
            "form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
# /docs and /redoc (off unless `docs: true`) are FastAPI's pages: an inline script and
# swagger-ui/redoc from the jsDelivr CDN (and redoc's fonts and worker).
DOCS_CSP = ("default-src 'none'; script-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net; "
            "style-src 'self' 'unsafe-inline' https://cdn.jsdelivr.net https://fonts.googleapis.com; "
            "font-src https://fonts.gstatic.com; "
            "img-src 'self' data: https://fastapi.tiangolo.com https://cdn.redoc.ly; "
            "worker-src blob:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def _headers(csp):
    return [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"), (b"x-content-type-options", b"nosniff")]


class SecurityHeaders:
    """Adds the security headers to every HTTP answer (a relaxed CSP on the docs pages)."""

    def __init__(self, app, docs=False):
        self.app = app
        self.page = _headers(PAGE_CSP)
        self.docs = _headers(DOCS_CSP) if docs else self.page

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        extra = self.docs if scope.get("path") in DOCS_PATHS else self.page

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", ())}
                message = {**message, "headers": list(message.get("headers", ())) +
                           [h for h in extra if h[0] not in names]}
            await send(message)
        await self.app(scope, receive, send_with_headers)


def trusted_host_names(trusted_hosts, auth, bind_host):
    """The Host names accepted, or None when any is (auth on and no `trusted_hosts` list).

    Without auth, a browser tricked by DNS rebinding (a name of the attacker's that resolves to
    127.0.0.1) would read the data: its requests carry the attacker's name as Host, so only the
    loopback names and the bind address pass. With auth the token protects, unless a list is set.
    """
    if trusted_hosts is not None:
        return None if "*" in trusted_hosts else frozenset(trusted_hosts)
    if auth:
        return None
    names = set(LOOPBACK_NAMES)
    if bind_host not in ("", "0.0.0.0", "::"):
        names.add(bind_host.lower())
    return frozenset(names)


def host_of(header: str) -> str:
    """The host part of a Host header, lower case, without port, brackets or a final dot."""
    h = header.strip().lower()
    if h.startswith("["):
        h = h[1:].split("]", 1)[0]
    elif h.count(":") == 1:
        h = h.split(":", 1)[0]
    return h.rstrip(".")


class TrustedHost:
    """Answers 400 {"error": ...} to a request whose Host is not one of `names`."""

    def __init__(self, app, names):
        self.app = app
        self.names = names

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.names is None:
            return await self.app(scope, receive, send)
        raw = next((v for k, v in scope.get("headers", ()) if k == b"host"), b"")
        host = host_of(raw.decode("latin-1"))
        if host in self.names:
            return await self.app(scope, receive, send)
        body = json.dumps({"error": "Host %r is not trusted (trusted_hosts: %s)"
                                    % (host[:100], ", ".join(sorted(self.names)))}).encode()
        await send({"type": "http.response.start", "status": 400,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
