"""The Akto HTTP call, for both sides: the hook's inline check and the worker's deliveries.

aiohttp, not httpx: measured on this project's 2-core machines, httpx's own transport costs about
2.5 ms of CPU per request against aiohttp's 0.4 ms, which alone would cap a worker process near
400 records/s (docs/decisions.md). The session is pooled and created once per event loop.
"""

from __future__ import annotations

import asyncio
from types import TracebackType

import aiohttp
import orjson
from yarl import URL

from .config import AktoSettings
from .errors import AktoBadResponse, AktoHTTPError, AktoUnreachable
from .wire import Verdict, batch_body, http_proxy_params, parse_verdict

HTTP_PROXY_PATH = "/api/http-proxy"
INGEST_PATH = "/api/ingestData"


class AktoClient:
    """A pooled client for Akto's two ingestion endpoints.

    Every method raises :class:`AktoUnreachable` (connection failure or timeout),
    :class:`AktoHTTPError` (a status other than 200) or :class:`AktoBadResponse`.
    """

    def __init__(self, akto: AktoSettings, *, timeout: float, max_connections: int = 100) -> None:
        self._base = akto.akto_base_url
        self._headers = {
            "Content-Type": "application/json",
            "Authorization": akto.akto_api_key.get_secret_value(),
        }
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tls_verify = akto.tls_verify
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        # Each endpoint-and-flags URL parsed once: block mode posts one per request.
        self._urls: dict[tuple[str, ...], URL] = {}

    def _get_session(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            connector = aiohttp.TCPConnector(limit=self._max_connections, ssl=self._tls_verify)
            self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, timeout=self._timeout)
            self._loop = loop
        return self._session

    def _url(self, path: str, params: dict[str, str] | None) -> URL:
        key = (path, *(f"{k}={v}" for k, v in (params or {}).items()))
        url = self._urls.get(key)
        if url is None:
            url = self._urls[key] = URL(self._base + path).extend_query(params or {})
        return url

    async def _post(
        self, path: str, data: bytes, params: dict[str, str] | None = None, time_limit: float | None = None
    ) -> tuple[int, bytes]:
        session = self._get_session()
        limit = self._timeout if time_limit is None else aiohttp.ClientTimeout(total=time_limit)
        try:
            # A redirect is an answer, not a delivery: aiohttp would follow a 301 or 302 to this POST
            # with a GET without the body, and count the page it lands on as Akto taking the records.
            async with session.post(self._url(path, params), data=data, timeout=limit, allow_redirects=False) as resp:
                return resp.status, await resp.read()
        except TimeoutError:
            raise AktoUnreachable(f"no answer from Akto within {limit.total}s") from None
        except aiohttp.ClientError as exc:
            raise AktoUnreachable(f"cannot reach Akto: {exc}") from None

    async def http_proxy(
        self,
        envelope: bytes,
        *,
        check_request: bool,
        check_response: bool,
        ingest: bool,
        check_files: bool = False,
        time_limit: float | None = None,
    ) -> Verdict:
        """POST one record (an envelope from :func:`wire.encode`, or attachments from
        :func:`wire.files_body` with ``check_files``) to ``/api/http-proxy``; returns Akto's verdict
        (allow when no check ran). ``time_limit`` (seconds) replaces the client's timeout for this call."""
        params = http_proxy_params(
            check_request=check_request, check_response=check_response, ingest=ingest, check_files=check_files
        )
        status, body = await self._post(HTTP_PROXY_PATH, envelope, params, time_limit)
        if status != 200:
            raise AktoHTTPError(status, body.decode(errors="replace"))
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise AktoBadResponse(f"Akto answered 200 with a body that is not JSON: {body[:120]!r}") from None
        return parse_verdict(decoded)

    async def ingest_batch(self, envelopes: list[bytes]) -> None:
        """POST encoded envelopes to ``/api/ingestData``. Akto answers ``{"success": false}`` even on
        success, so only the status code is judged."""
        status, body = await self._post(INGEST_PATH, batch_body(envelopes))
        if status != 200:
            raise AktoHTTPError(status, body.decode(errors="replace"))

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def __aenter__(self) -> AktoClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
