"""The HTTP client side shared by the pull sources (Jolokia, Prometheus): one keep-alive
session per target with its timeout, Basic auth and TLS verification settings.

Owns also the redirect rule: credentials go only to the target's own origin. A redirect
within that origin is followed (up to MAX_REDIRECTS); one to another origin fails the
scrape with CrossOriginRedirect, naming that origin, and is never followed.
"""

from __future__ import annotations

import ssl
from types import SimpleNamespace

import aiohttp
from yarl import URL

from relay.config import TLSSettings
from relay.tls import client_context

MAX_REDIRECTS = 3


class CrossOriginRedirect(aiohttp.ClientError):
    """The target redirected to another origin; following it could hand that origin the credentials."""

    def __init__(self, target: str, location: str) -> None:
        self.origin = location
        super().__init__(f"{target} redirected to another origin, {location}; redirects that leave the target's "
                         "origin are not followed, so its credentials never reach another server")


class TooManyScrapeRedirects(aiohttp.ClientError):
    def __init__(self, target: str) -> None:
        super().__init__(f"{target} redirected more than {MAX_REDIRECTS} times")


def _origin(url: URL) -> str:
    return str(url.origin())


class ScrapeSession:
    def __init__(self, url: str, timeout: float, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, insecure_skip_verify: bool = False) -> None:
        self.url = url
        self.timeout = timeout
        self.auth = aiohttp.BasicAuth(username, password or "") if username else None
        self.ca_file = ca_file
        self.insecure = insecure_skip_verify
        self._origin = _origin(URL(url))
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        return client_context(TLSSettings(ca_file=self.ca_file, insecure_skip_verify=self.insecure))

    def get(self) -> aiohttp.ClientSession:
        """The session, created on first use (inside the event loop)."""
        if self._session is None:
            redirects = aiohttp.TraceConfig()
            redirects.on_request_start.append(self._count_from_zero)
            redirects.on_request_redirect.append(self._check_redirect)
            # No session-wide auth: aiohttp would add it to every hop of a redirect, whatever
            # the origin. _authorize adds it to requests for the target's own origin only.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), middlewares=(self._authorize,),
                connector=aiohttp.TCPConnector(limit=2, ssl=self._ssl()), trace_configs=[redirects],
            )
        return self._session

    async def _authorize(self, req: aiohttp.ClientRequest,
                         handler: aiohttp.ClientHandlerType) -> aiohttp.ClientResponse:
        if _origin(req.url) != self._origin:
            raise CrossOriginRedirect(self.url, _origin(req.url))  # unreachable past _check_redirect
        if self.auth is not None:
            req.headers["Authorization"] = self.auth.encode()
        return await handler(req)

    async def _count_from_zero(self, _: aiohttp.ClientSession, ctx: SimpleNamespace,
                               __: aiohttp.TraceRequestStartParams) -> None:
        ctx.redirects = 0

    async def _check_redirect(self, _: aiohttp.ClientSession, ctx: SimpleNamespace,
                              params: aiohttp.TraceRequestRedirectParams) -> None:
        """Before a redirect is followed: fail the scrape if it leaves the origin or loops."""
        location = params.response.headers.get("Location", "")
        target = params.url.join(URL(location))
        ctx.redirects += 1
        if _origin(target) != self._origin:
            params.response.release()
            raise CrossOriginRedirect(self.url, _origin(target))
        if ctx.redirects > MAX_REDIRECTS:
            params.response.release()
            raise TooManyScrapeRedirects(self.url)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
