"""The link to the relay: connect, resume, reliable sending, token refresh, refusals."""
import asyncio
import base64
import hashlib
import hmac
import inspect
import json
import random
import secrets
import time
from typing import Any, Awaitable, Callable, Optional, Union
from urllib.parse import quote, urlsplit

import websockets
from websockets.exceptions import InvalidStatus

TokenProvider = Callable[[], Union[str, Awaitable[str]]]


class RelayRefused(Exception):
    """The relay refused the credentials (401, 403): trying again will not help."""

    def __init__(self, status: int, detail: str):
        super().__init__(f"relay refused the link ({status}): {detail}")
        self.status = status
        self.detail = detail


class RelayClosed(Exception):
    """The link ended for good (closed by the client, or replaced by a newer connection: 4002)."""

    def __init__(self, code: Optional[int] = None, reason: str = ""):
        super().__init__(f"relay link closed ({code}): {reason}" if code else "relay link closed")
        self.code = code
        self.reason = reason


def signed_device_query(device_id: str, secret: str, now: Optional[float] = None) -> str:
    """Contract §1.2: device_id, ts, a fresh nonce and sig = hex(HMAC-SHA256(secret, id\\nts\\nnonce))."""
    ts = str(int(now if now is not None else time.time()))
    nonce = secrets.token_hex(16)
    sig = hmac.new(secret.encode(), f"{device_id}\n{ts}\n{nonce}".encode(), hashlib.sha256).hexdigest()
    return f"device_id={quote(device_id)}&ts={ts}&nonce={nonce}&sig={sig}"


def derived_secret(device_id: str, master_key: str) -> str:
    """The secret a relay derives for an unregistered device from RELAY_DEVICE_MASTER_KEY (development)."""
    return hmac.new(master_key.encode(), device_id.encode(), hashlib.sha256).hexdigest()


def token_expiry(token: str) -> Optional[float]:
    """The `exp` of a JWT (unverified: only to know when to refresh it)."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"])
    except (IndexError, KeyError, ValueError, TypeError):
        return None


async def _call(provider: TokenProvider) -> str:
    value = provider()
    return await value if inspect.isawaitable(value) else value


class RelayClient:
    """One link to the relay, as an app or a device. It connects, and whenever the socket drops
    (or the relay says `go_away`) it resumes the same link with `resume_token` and `last_seq`,
    after a delay that grows with each failure (with jitter) and honours `Retry-After` and
    `reconnect_after_ms`. Every message it sends is numbered with `cseq` and kept until the relay
    acks it, and sent again after a resume; a forwarded message whose `peer_cseq` it processed
    already, or a `seq` it has, is not delivered twice. An app's token is refreshed with `auth`
    before it expires. A 401 or 403 stops it with `RelayRefused`; 4002 with `RelayClosed`.

    Iterate over the client (`async for message in client`) for what the relay sends."""

    def __init__(
        self,
        base_url: str,
        path: str,
        *,
        token_provider: Optional[TokenProvider] = None,
        device: Optional[tuple] = None,
        backoff: tuple = (0.25, 30.0),
        refresh_margin: float = 60.0,
        pace: tuple = (40, 9.0),
        log: Callable[[str], None] = lambda _: None,
    ):
        self.base_url = base_url.rstrip("/")
        self.path = path
        self.token_provider = token_provider
        self.device = device
        self.backoff = backoff
        self.refresh_margin = refresh_margin
        # What the client sends is paced (burst, per second) to stay under the relay's per-link
        # limit (contract §5: 50 in a burst, 10/s by default), with a margin.
        self.pace = pace
        self._tokens = float(pace[0])
        self._tokens_at = time.monotonic()
        self._write_lock = asyncio.Lock()
        self.log = log
        self.hello: Optional[dict] = None
        self.resume_token: Optional[str] = None
        self.last_seq = 0
        self._acked_seq = 0
        self._socket = None
        self._events: asyncio.Queue = asyncio.Queue()
        self._error: Optional[Exception] = None
        self._closing = False
        self._task: Optional[asyncio.Task] = None
        self._connected = asyncio.Event()
        self._cseq = 0
        self._unacked: list = []  # [(cseq, message)], oldest first
        self._peer_cseqs: dict = {}  # session_id -> highest peer_cseq processed
        self._waiting: dict = {}  # request_id -> future of its answer
        self._reconnect_url: Optional[str] = None
        self._reconnect_after: Optional[float] = None
        self._refresh: Optional[asyncio.Task] = None
        self.connects = 0

    # Making one

    @classmethod
    def app(cls, base_url: str, token_provider: TokenProvider, **options) -> "RelayClient":
        """An app: `token_provider` returns a current JWT (called at each connect and before `exp`)."""
        return cls(base_url, "/ws/app", token_provider=token_provider, **options)

    @classmethod
    def for_device(cls, base_url: str, device_id: str, secret: str, **options) -> "RelayClient":
        """A device: each connect is signed with `secret` and a fresh nonce."""
        return cls(base_url, "/ws/device", device=(device_id, secret), **options)

    async def __aenter__(self) -> "RelayClient":
        await self.start()
        return self

    async def __aexit__(self, *_):
        await self.close()

    async def start(self):
        """Connects and keeps the link up; returns once the first `hello` came (or raises the refusal)."""
        self._task = asyncio.create_task(self._run())
        waiter = asyncio.create_task(self._connected.wait())
        done, _ = await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        if self._task in done:
            waiter.cancel()
            self._task.result()
            raise self._error or RelayClosed()

    async def close(self):
        """Ends the link: the socket closes; nothing is resumed."""
        self._closing = True
        if self._refresh:
            self._refresh.cancel()
        if self._socket is not None:
            await self._socket.close()
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._finish(RelayClosed())

    # Sending

    async def send(self, message: dict) -> int:
        """Numbers `message` with the next `cseq` and sends it now (or with the next resume);
        it is kept until the relay acks it. Returns its `cseq`."""
        self._cseq += 1
        message = {**message, "cseq": self._cseq}
        self._unacked.append((self._cseq, message))
        await self._write(message)
        return self._cseq

    async def request(self, device_id: str, ttl: Optional[int] = None, metadata: Optional[dict] = None, timeout: float = 15) -> dict:
        """Asks for a session with `device_id` (apps): its `webrtc_credentials`, or raises with the `error`."""
        request_id = secrets.token_hex(8)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        message = {"type": "webrtc_request", "device_id": device_id, "request_id": request_id}
        if ttl is not None:
            message["ttl"] = ttl
        if metadata is not None:
            message["metadata"] = metadata
        await self.send(message)
        try:
            answer = await asyncio.wait_for(future, timeout)
        finally:
            self._waiting.pop(request_id, None)
        if answer["type"] == "error":
            raise RuntimeError(f"{answer.get('code')}: {answer.get('message')}")
        return answer

    async def send_offer(self, session_id: str, sdp: str) -> int:
        return await self.send({"type": "webrtc_offer", "session_id": session_id, "sdp": sdp})

    async def send_answer(self, session_id: str, sdp: str) -> int:
        return await self.send({"type": "webrtc_answer", "session_id": session_id, "sdp": sdp})

    async def send_ice(self, session_id: str, candidate: Optional[dict] = None, candidates: Optional[list] = None, complete: Optional[bool] = None) -> int:
        message: dict = {"type": "webrtc_ice", "session_id": session_id}
        if candidates is not None:
            message["candidates"] = candidates
        else:
            message["candidate"] = candidate
        if complete is not None:
            message["complete"] = complete
        return await self.send(message)

    async def close_session(self, session_id: str, reason: str = "normal") -> int:
        return await self.send({"type": "webrtc_close", "session_id": session_id, "reason": reason})

    async def reject(self, session_id: str, reason: Optional[str] = None) -> int:
        return await self.send({"type": "webrtc_reject", "session_id": session_id, "reason": reason})

    async def drop_socket(self):
        """Drops the socket without a word (as a lost network does): the link resumes."""
        if self._socket is not None:
            self._socket.transport.abort()

    @property
    def unacked(self) -> int:
        """Messages sent and not yet acked by the relay."""
        return len(self._unacked)

    # Receiving

    def __aiter__(self):
        return self

    async def __anext__(self) -> dict:
        item = await self._events.get()
        if isinstance(item, Exception):
            self._events.put_nowait(item)
            if isinstance(item, RelayClosed) and self._closing:
                raise StopAsyncIteration
            raise item
        return item

    async def next(self, *types: str, timeout: float = 15) -> dict:
        """The next message (of one of `types`, others skipped)."""
        while True:
            message = await asyncio.wait_for(self.__anext__(), timeout)
            if not types or message.get("type") in types:
                return message

    # The link

    async def _url(self) -> tuple:
        url = self.base_url + self.path
        if self._reconnect_url:
            # A reconnect_url naming only another node (no path) gets this client's endpoint.
            bare = urlsplit(self._reconnect_url).path in ("", "/")
            url = self._reconnect_url.rstrip("/") + self.path if bare else self._reconnect_url
        headers = {}
        query = []
        if self.device:
            query.append(signed_device_query(*self.device))
        if self.token_provider:
            headers["Authorization"] = "Bearer " + await _call(self.token_provider)
        if self.resume_token:
            query.append(f"resume_token={quote(self.resume_token)}&last_seq={self.last_seq}")
        if query:
            url += ("&" if "?" in url else "?") + "&".join(query)
        return url, headers

    async def _run(self):
        failures = 0
        while not self._closing:
            url, headers = await self._url()
            delay = None
            try:
                async with websockets.connect(url, additional_headers=headers, max_size=1 << 20, open_timeout=10) as socket:
                    failures = 0
                    await self._serve(socket)
            except InvalidStatus as refused:
                status = refused.response.status_code
                detail = _detail(refused.response.body)
                if status in (401, 403):
                    self._finish(RelayRefused(status, detail))
                    return
                retry_after = refused.response.headers.get("Retry-After")
                if retry_after and retry_after.isdigit():
                    delay = float(retry_after)
                self.log(f"connect refused ({status} {detail}); retrying")
            except RelayClosed as closed:
                self._finish(closed)
                return
            except (OSError, asyncio.TimeoutError, websockets.WebSocketException) as error:
                self.log(f"socket dropped ({error!r}); resuming")
            finally:
                self._socket = None
                self._connected.clear()
            if self._closing:
                return
            if self._reconnect_after is not None:
                delay, self._reconnect_after = self._reconnect_after, None
            if delay is None:
                low, high = self.backoff
                delay = min(high, low * (2 ** failures)) * random.uniform(0.5, 1.0)
                failures += 1
            await asyncio.sleep(delay)

    async def _serve(self, socket):
        hello = json.loads(await socket.recv())
        resumed = bool(hello.get("resumed"))
        if resumed:
            self._acked(hello.get("acked_cseq", 0))
        elif self.resume_token:
            # The old link could not be resumed: its sessions and what it did not deliver are gone.
            self.log("the link could not be resumed; a new one starts")
            self.last_seq = 0
            self._acked_seq = 0
            self._unacked.clear()
            self._peer_cseqs.clear()
            self._events.put_nowait({"type": "link_reset"})
        self.hello = hello
        self.resume_token = hello["resume_token"]
        self._reconnect_url = None
        self.connects += 1
        # What was not acked goes first, in order (what is sent meanwhile joins the end of the
        # list and goes with it): a higher cseq ahead of a lower one would make that one a duplicate.
        index = 0
        async with self._write_lock:
            while index < len(self._unacked):
                await self._paced()
                await socket.send(json.dumps(self._unacked[index][1]))
                index += 1
        self._socket = socket
        self._connected.set()
        self._events.put_nowait({"type": "connected", "hello": hello})
        self.log(f"link {hello['link_id']} {'resumed' if resumed else 'opened'}" + (f", {index} sent again" if index else ""))
        self._schedule_refresh()
        async for text in socket:
            await self._receive(json.loads(text))
        code = socket.close_code
        if code == 4002:
            raise RelayClosed(code, socket.close_reason or "replaced by a newer connection")

    async def _receive(self, message: dict):
        kind = message.get("type")
        seq = message.get("seq")
        if kind == "ack" and seq is None:
            self._acked(message.get("cseq", 0))
            return
        if seq is not None:
            if seq <= self.last_seq:
                return
            self.last_seq = seq
            if seq - self._acked_seq >= 16:
                await self._write({"type": "ack", "seq": seq})
                self._acked_seq = seq
        number, session = message.get("peer_cseq"), message.get("session_id")
        if number is not None and session is not None:
            if number <= self._peer_cseqs.get(session, 0):
                return
            self._peer_cseqs[session] = number
        if kind == "go_away":
            self._reconnect_after = message.get("reconnect_after_ms", 0) / 1000
            self._reconnect_url = message.get("reconnect_url")
            if self._socket is not None:
                await self._socket.close()
        waiter = self._waiting.get(message.get("request_id") or "")
        if waiter is not None and not waiter.done() and kind in ("webrtc_credentials", "error"):
            waiter.set_result(message)
        self._events.put_nowait(message)

    async def _write(self, message: dict):
        async with self._write_lock:
            socket = self._socket
            if socket is None:
                return
            await self._paced()
            if self._socket is not socket:
                return  # dropped meanwhile: sent again after the resume
            try:
                await socket.send(json.dumps(message))
            except websockets.WebSocketException:
                pass  # sent again after the resume

    async def _paced(self):
        """Waits for a token of the pace (a token bucket), and spends it."""
        burst, per_second = self.pace
        now = time.monotonic()
        self._tokens = min(float(burst), self._tokens + (now - self._tokens_at) * per_second)
        self._tokens_at = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / per_second)
            self._tokens, self._tokens_at = 1.0, time.monotonic()
        self._tokens -= 1

    def _acked(self, cseq: int):
        while self._unacked and self._unacked[0][0] <= cseq:
            self._unacked.pop(0)

    def _schedule_refresh(self):
        """An app's token goes again with `auth` `refresh_margin` seconds before its `exp`."""
        if not self.token_provider or self._refresh is not None:
            return

        async def refresh():
            while not self._closing:
                token = await _call(self.token_provider)
                expiry = token_expiry(token)
                if expiry is None:
                    return
                wait = max(1.0, expiry - time.time() - self.refresh_margin)
                await asyncio.sleep(wait)
                fresh = await _call(self.token_provider)
                await self._connected.wait()
                await self.send({"type": "auth", "token": fresh})
                self.log("token refreshed")

        self._refresh = asyncio.create_task(refresh())

    def _finish(self, error: Exception):
        if self._error is None:
            self._error = error
            self._events.put_nowait(error)
        for waiter in self._waiting.values():
            if not waiter.done():
                waiter.set_exception(error)


def _detail(body: Any) -> str:
    try:
        return json.loads(body or b"{}").get("detail", "")
    except (ValueError, AttributeError):
        return ""
