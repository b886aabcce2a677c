#!/usr/bin/env python3
"""A Python app client: asks the relay for a session with a robot, answers its offer, receives
its video and data channel, reports what arrived, and hangs up.

    python3 examples/app/app.py --relay ws://127.0.0.1:8080 --token "$(relay token --sub alice --device robot-1)" --device-id robot-1

Prints one JSON line at the end: frames received, the longest gap between two frames, frame
size, the selected ICE candidate pair's types (relay when the media went through TURN), and how
the session ended.
"""
import argparse
import asyncio
import json
import os
import sys
import time

from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError

from relay_client import RelayClient  # pip install ./clients/python
from relay_client.webrtc import add_remote_candidate, candidates_of, rtc_configuration


def selected_pair(pc):
    """The nominated candidate pair's (local, remote) types, read from aioice (aiortc's getStats has no pair)."""
    for transceiver in pc.getTransceivers():
        connection = transceiver.receiver.transport.transport._connection
        for pair in getattr(connection, "_nominated", {}).values():
            return pair.local_candidate.type, pair.remote_candidate.type
    return None


async def run(args):
    link = RelayClient.app(args.relay, lambda: args.token, log=lambda text: print(f"app: {text}", file=sys.stderr, flush=True))
    await link.start()
    report = {"frames": 0, "width": None, "height": None, "messages": 0, "peer_status": [], "max_frame_gap_s": 0}
    await link.send({"type": "webrtc_request", "device_id": args.device_id})
    credentials = await link.next("webrtc_credentials", "error", timeout=None)
    if credentials["type"] == "error":
        print(json.dumps({"error": credentials}), flush=True)
        return 1
    session_id = credentials["session_id"]
    report["session_id"] = session_id
    pc = RTCPeerConnection(rtc_configuration(credentials["ice_servers"], relay_only=args.relay_only))
    first_frame = asyncio.Event()

    @pc.on("track")
    def on_track(track):
        async def count():
            last = None
            try:
                while True:
                    frame = await track.recv()
                    now = time.monotonic()
                    if last is not None:
                        report["max_frame_gap_s"] = round(max(report["max_frame_gap_s"], now - last), 3)
                    last = now
                    report["frames"] += 1
                    report["width"], report["height"] = frame.width, frame.height
                    first_frame.set()
            except MediaStreamError:
                pass
        asyncio.ensure_future(count())

    @pc.on("datachannel")
    def on_channel(channel):
        @channel.on("message")
        def on_message(message):
            report["messages"] += 1

    async def signaling():
        while True:
            message = await link.next(timeout=None)
            kind = message["type"]
            if kind == "webrtc_offer":
                await pc.setRemoteDescription(RTCSessionDescription(message["sdp"], "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
                await link.send({"type": "webrtc_answer", "session_id": session_id, "sdp": pc.localDescription.sdp})
                await link.send({"type": "webrtc_ice", "session_id": session_id, "candidates": list(candidates_of(pc.localDescription.sdp)), "complete": True})
            elif kind == "webrtc_ice":
                for candidate in message.get("candidates") or [message.get("candidate")]:
                    await add_remote_candidate(pc, candidate)
            elif kind == "peer_status":
                report["peer_status"].append(message["status"])
            elif kind == "webrtc_close":
                return message

    signaler = asyncio.create_task(signaling())
    await asyncio.wait_for(first_frame.wait(), timeout=args.timeout)
    await asyncio.sleep(args.seconds)
    report["frames_before_close"] = report["frames"]
    report["pair"] = selected_pair(pc)
    await link.send({"type": "webrtc_close", "session_id": session_id, "reason": "normal"})
    closed = await asyncio.wait_for(signaler, timeout=10)
    report["closed"] = {"reason": closed.get("reason"), "by": closed.get("by")}
    await pc.close()
    report["state"] = pc.connectionState
    await link.close()
    print(json.dumps(report), flush=True)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relay", default="ws://127.0.0.1:8080")
    parser.add_argument("--token", default=os.environ.get("RELAY_APP_TOKEN"), help="an app JWT (relay token --sub ... prints one)")
    parser.add_argument("--device-id", default="robot-1")
    parser.add_argument("--seconds", type=float, default=3, help="how long to watch after the first frame")
    parser.add_argument("--timeout", type=float, default=20, help="how long to wait for the first frame")
    parser.add_argument("--relay-only", action="store_true", help="use TURN relay candidates only (iceTransportPolicy relay)")
    args = parser.parse_args()
    if not args.token:
        parser.error("pass --token (or set RELAY_APP_TOKEN)")
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
