"""Signaling helpers shared by the example robot and app: the relay's WebSocket link (hello,
seq, acks, resume after a dropped socket, reliable sending with cseq), device URL signing, and
ICE server conversion.

Copy this file with the example you start from; it only needs `websockets` and `aiortc`.
"""
import asyncio
import hashlib
import hmac
import json
import secrets
import time

import websockets
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp, candidate_to_sdp


def signed_device_query(device_id: str, secret: str) -> str:
    """Contract §1.2: device_id, ts, nonce and sig = hex(HMAC-SHA256(secret, id\\nts\\nnonce))."""
    ts = str(int(time.time()))
    nonce = secrets.token_hex(16)
    sig = hmac.new(secret.encode(), f"{device_id}\n{ts}\n{nonce}".encode(), hashlib.sha256).hexdigest()
    return f"device_id={device_id}&ts={ts}&nonce={nonce}&sig={sig}"


def derived_secret(device_id: str, master_key: str) -> str:
    """The secret a relay derives for an unregistered device from RELAY_DEVICE_MASTER_KEY."""
    return hmac.new(master_key.encode(), device_id.encode(), hashlib.sha256).hexdigest()


def rtc_configuration(ice_servers: dict, relay_only: bool = False) -> RTCConfiguration:
    """The relay's credential document ({"iceServers": [...], "ttl", "expiresAt"}) as aiortc wants it."""
    servers = []
    for server in ice_servers.get("iceServers", []):
        urls = server["urls"] if isinstance(server["urls"], list) else [server["urls"]]
        # aiortc speaks TURN over UDP and TCP, not TLS.
        urls = [url for url in urls if not url.startswith("turns:")]
        if urls:
            servers.append(RTCIceServer(urls=urls, username=server.get("username"), credential=server.get("credential")))
    policy = RTCIceTransportPolicy.RELAY if relay_only else RTCIceTransportPolicy.ALL
    return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)


def candidates_of(sdp: str):
    """aiortc gathers before it answers (no trickle): the candidates in its SDP, as webrtc_ice payloads."""
    mid = "0"
    for line in sdp.splitlines():
        if line.startswith("a=mid:"):
            mid = line[len("a=mid:"):]
        elif line.startswith("a=candidate:"):
            yield {"candidate": line[2:], "sdpMid": mid, "sdpMLineIndex": 0}


async def add_remote_candidate(pc, candidate):
    """A trickled candidate from the other side (None or empty marks the end)."""
    if not candidate or not candidate.get("candidate"):
        return
    text = candidate["candidate"]
    parsed = candidate_from_sdp(text[len("candidate:"):] if text.startswith("candidate:") else text)
    parsed.sdpMid = candidate.get("sdpMid")
    parsed.sdpMLineIndex = candidate.get("sdpMLineIndex")
    await pc.addIceCandidate(parsed)


class RelayLink:
    """One link to the relay (contract §4): survives dropped sockets by resuming with
    resume_token and last_seq, so no message is lost or seen twice.

    It also sends reliably (contract §11): every message it sends carries the next `cseq` and is
    kept until the relay acks it; after a resume, whatever the relay did not ack (its hello says
    `acked_cseq`) is sent again, and the relay drops what it had already. A message forwarded
    from the other party carries its `peer_cseq`; one seen before (sent again after a relay
    node died) is ignored here."""

    def __init__(self, url_for_connect, headers=None, log=print):
        self.url_for_connect = url_for_connect  # () -> URL with fresh credentials
        self.headers = headers or {}
        self.log = log
        self.socket = None
        self.resume_token = None
        self.last_seq = 0
        self.inbox: asyncio.Queue = asyncio.Queue()
        self.closed = False
        self.connected = asyncio.Event()
        self.cseq = 0
        self.unacked = []  # [(cseq, message)], oldest first
        self.peer_cseqs = {}  # session_id -> the highest peer_cseq processed

    async def run(self):
        """Connects, reads, and reconnects (with resume) until close() is called."""
        while not self.closed:
            url = self.url_for_connect()
            if self.resume_token:
                url += f"{'&' if '?' in url else '?'}resume_token={self.resume_token}&last_seq={self.last_seq}"
            try:
                async with websockets.connect(url, additional_headers=self.headers, max_size=1 << 20) as socket:
                    hello = json.loads(await socket.recv())
                    if hello.get("resumed"):
                        self._acked(hello.get("acked_cseq", 0))
                    elif self.resume_token:
                        # The old link could not be resumed: what it did not deliver went with its sessions.
                        self.last_seq = 0
                        self.unacked.clear()
                        self.peer_cseqs.clear()
                    self.resume_token = hello["resume_token"]
                    self.socket = socket
                    for _, message in self.unacked:
                        await socket.send(json.dumps(message))
                    self.connected.set()
                    self.log(f"link {hello['link_id']} {'resumed' if hello.get('resumed') else 'opened'}"
                             + (f", {len(self.unacked)} sent again" if self.unacked else ""))
                    async for text in socket:
                        message = json.loads(text)
                        if message.get("type") == "ack" and "cseq" in message:
                            self._acked(message["cseq"])
                            continue
                        seq = message.get("seq", 0)
                        if seq and seq <= self.last_seq:
                            continue
                        self.last_seq = max(self.last_seq, seq)
                        if self._seen_before(message):
                            continue
                        await self.inbox.put(message)
                        if seq and seq % 20 == 0:
                            await self.send({"type": "ack", "seq": seq})
            except (OSError, websockets.WebSocketException) as error:
                self.log(f"socket dropped ({error}); resuming")
            self.socket = None
            self.connected.clear()
            if not self.closed:
                await asyncio.sleep(0.5)

    async def send(self, message: dict):
        """Numbers `message` and sends it now, or with the resume if the socket is down; it is
        kept until the relay acks it. (Acks of `seq` are not numbered: sending one twice is
        harmless.)"""
        if message.get("type") != "ack":
            self.cseq += 1
            message = {**message, "cseq": self.cseq}
            self.unacked.append((self.cseq, message))
        socket = self.socket
        if socket is None:
            return
        try:
            await socket.send(json.dumps(message))
        except websockets.WebSocketException:
            pass  # sent again after the resume

    def _acked(self, cseq: int):
        while self.unacked and self.unacked[0][0] <= cseq:
            self.unacked.pop(0)

    def _seen_before(self, message: dict) -> bool:
        """A forwarded message whose peer_cseq was processed already in its session."""
        number, session = message.get("peer_cseq"), message.get("session_id")
        if number is None or session is None:
            return False
        if number <= self.peer_cseqs.get(session, 0):
            return True
        self.peer_cseqs[session] = number
        return False

    async def drop_socket(self):
        """Drops the transport without a word (as a lost network does): the link resumes."""
        if self.socket:
            self.socket.transport.abort()

    async def close(self):
        self.closed = True
        if self.socket:
            await self.socket.close()

    async def next(self, *types):
        while True:
            message = await self.inbox.get()
            if not types or message["type"] in types:
                return message


def describe(pc) -> str:
    return f"{pc.connectionState}/{pc.iceConnectionState}"


__all__ = [
    "RelayLink", "signed_device_query", "derived_secret", "rtc_configuration", "candidates_of", "add_remote_candidate",
    "candidate_to_sdp", "describe",
]
