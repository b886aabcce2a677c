"""aiortc helpers (`pip install ./clients/python[aiortc]`): the relay's ICE servers as aiortc wants
them, and candidates in and out of aiortc's SDP (it gathers before it answers: no trickle)."""
from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from aiortc.sdp import candidate_from_sdp


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


__all__ = ["rtc_configuration", "candidates_of", "add_remote_candidate"]
