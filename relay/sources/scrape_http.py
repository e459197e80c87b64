"""The HTTP client side shared by the pull sources (Jolokia, Prometheus): one keep-alive
session per target with its timeout, Basic auth and TLS verification settings."""

from __future__ import annotations

import ssl

import aiohttp

from relay.config import TLSSettings
from relay.tls import client_context


class ScrapeSession:
    def __init__(self, url: str, timeout: float, username: str | None = None, password: str | None = None,
                 ca_file: str | None = None, insecure_skip_verify: bool = False) -> None:
        self.url = url
        self.timeout = timeout
        self.auth = aiohttp.BasicAuth(username, password or "") if username else None
        self.ca_file = ca_file
        self.insecure = insecure_skip_verify
        self._session: aiohttp.ClientSession | None = None

    def _ssl(self) -> ssl.SSLContext | bool:
        if not self.url.startswith("https:"):
            return True
        return client_context(TLSSettings(ca_file=self.ca_file, insecure_skip_verify=self.insecure))

    def get(self) -> aiohttp.ClientSession:
        """The session, created on first use (inside the event loop)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout), auth=self.auth,
                connector=aiohttp.TCPConnector(limit=2, ssl=self._ssl()),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
