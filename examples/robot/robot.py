#!/usr/bin/env python3
"""A simulated robot: connects to the relay as a device, and for every session an app asks for
it offers a generated test-pattern video track and a data channel (aiortc).

    python3 examples/robot/robot.py --relay ws://127.0.0.1:8080 --device-id robot-1 --secret <secret>
    python3 examples/robot/robot.py --relay ws://127.0.0.1:8080 --device-id robot-1 --master-key <RELAY_DEVICE_MASTER_KEY>

It answers webrtc_request with an offer, sends its ICE candidates as webrtc_ice, applies the app's
webrtc_answer and webrtc_ice, tears a session down on webrtc_close, and keeps its link through
dropped sockets and relay restarts (the Python client, `pip install ./clients/python`). This is the
file a robot-firmware author copies.

    --video /dev/video0     a camera (V4L2, 640x480) instead of the test pattern
    --video clip.mp4        a file, played once at its own pace

aiortc cannot restart ICE on a live connection (no `iceRestart` offers, and it does not apply a
new `iceServers` configuration): on `ice_servers_refresh` it keeps its servers, and an app that
needs a new path after an ICE failure asks for a new session.
"""
import argparse
import asyncio
import json
import os
import signal
import time

import numpy
from av import VideoFrame
from aiortc import RTCPeerConnection, RTCSessionDescription, VideoStreamTrack
from aiortc.contrib.media import MediaPlayer, MediaRelay

from relay_client import RelayClient, derived_secret  # pip install ./clients/python
from relay_client.webrtc import add_remote_candidate, candidates_of, rtc_configuration


class TestPattern(VideoStreamTrack):
    """Moving colour bars, 320x240 at 30 frames per second."""

    def __init__(self, width=320, height=240):
        super().__init__()
        self.width, self.height = width, height
        bars = numpy.array([[255, 255, 255], [255, 255, 0], [0, 255, 255], [0, 255, 0], [255, 0, 255], [255, 0, 0], [0, 0, 255], [0, 0, 0]], dtype=numpy.uint8)
        row = numpy.repeat(bars, width // len(bars) + 1, axis=0)[:width]
        self.base = numpy.repeat(row[numpy.newaxis, :, :], height, axis=0)
        self.count = 0

    async def recv(self):
        pts, time_base = await self.next_timestamp()
        image = numpy.roll(self.base, self.count * 4, axis=1)
        self.count += 1
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame


class Robot:
    def __init__(self, args):
        self.args = args
        secret = args.secret or derived_secret(args.device_id, args.master_key)
        self.link = RelayClient.for_device(args.relay, args.device_id, secret, log=self.log)
        self.sessions = {}
        # A camera or file is opened once and shared by every session.
        self.player = None
        self.fanout = MediaRelay()

    def log(self, text):
        print(f"robot {self.args.device_id}: {text}", flush=True)

    async def run(self):
        await self.link.start()
        # SIGUSR1 drops the signaling socket (as a lost network would); the link resumes and
        # live calls go on.
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, lambda: asyncio.ensure_future(self.link.drop_socket()))
        await self.describe()
        while True:
            message = await self.link.next(timeout=None)
            kind, session_id = message["type"], message.get("session_id")
            try:
                if kind == "link_reset":
                    # The relay could not resume the link: it forgot the sessions and what the
                    # robot said of itself.
                    for session in list(self.sessions):
                        await self.stop(session, "link reset")
                    await self.describe()
                elif kind == "webrtc_request":
                    await self.start(session_id, message)
                elif kind == "webrtc_answer" and session_id in self.sessions:
                    await self.sessions[session_id].setRemoteDescription(RTCSessionDescription(message["sdp"], "answer"))
                elif kind == "webrtc_offer" and session_id in self.sessions:
                    await self.answer(session_id, message["sdp"])
                elif kind == "webrtc_ice" and session_id in self.sessions:
                    candidates = message.get("candidates") or [message.get("candidate")]
                    for candidate in candidates:
                        await add_remote_candidate(self.sessions[session_id], candidate)
                elif kind == "webrtc_close":
                    await self.stop(session_id, message.get("reason"))
                elif kind == "ice_servers_refresh":
                    # aiortc cannot change a live connection's servers; a browser would call setConfiguration.
                    self.log(f"session {session_id}: fresh ICE servers (ttl {message['ice_servers'].get('ttl')})")
                elif kind in ("peer_status", "go_away", "error"):
                    self.log(f"{kind}: {json.dumps(message)}")
            except Exception as error:  # keep serving other sessions
                self.log(f"session {session_id}: {type(error).__name__}: {error}")

    async def describe(self):
        await self.link.send({"type": "device_info", "capabilities": {"video": ["vp8", "h264"], "model": "simulated", "datachannel": True}})

    def video_track(self):
        """The test pattern, or the shared camera or file (`--video`)."""
        if not self.args.video:
            return TestPattern()
        if self.player is None:
            if self.args.video.startswith("/dev/video"):
                self.player = MediaPlayer(self.args.video, format="v4l2", options={"video_size": "640x480", "framerate": "30"})
            else:
                self.player = MediaPlayer(self.args.video)
        return self.fanout.subscribe(self.player.video)

    async def start(self, session_id, request):
        self.log(f"session {session_id} requested by {request.get('user_id')}")
        pc = RTCPeerConnection(rtc_configuration(request["ice_servers"], relay_only=self.args.relay_only))
        self.sessions[session_id] = pc
        pc.addTrack(self.video_track())
        channel = pc.createDataChannel("telemetry")

        @channel.on("open")
        def on_open():
            channel.send(json.dumps({"battery": 0.87, "at": time.time()}))

        @pc.on("connectionstatechange")
        async def on_state():
            self.log(f"session {session_id}: {pc.connectionState}")

        await pc.setLocalDescription(await pc.createOffer())
        await self.link.send({"type": "webrtc_offer", "session_id": session_id, "sdp": pc.localDescription.sdp})
        await self.send_candidates(session_id, pc)

    async def answer(self, session_id, sdp):
        pc = self.sessions[session_id]
        await pc.setRemoteDescription(RTCSessionDescription(sdp, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        await self.link.send({"type": "webrtc_answer", "session_id": session_id, "sdp": pc.localDescription.sdp})
        await self.send_candidates(session_id, pc)

    async def send_candidates(self, session_id, pc):
        # aiortc gathers before it describes; the candidates go out as trickle messages too.
        candidates = list(candidates_of(pc.localDescription.sdp))
        await self.link.send({"type": "webrtc_ice", "session_id": session_id, "candidates": candidates, "complete": True})

    async def stop(self, session_id, reason):
        pc = self.sessions.pop(session_id, None)
        if pc:
            await pc.close()
            self.log(f"session {session_id} closed ({reason})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--relay", default="ws://127.0.0.1:8080")
    parser.add_argument("--device-id", default="robot-1")
    parser.add_argument("--secret", help="the device's own secret (relay device add prints it)")
    parser.add_argument("--master-key", default=os.environ.get("RELAY_DEVICE_MASTER_KEY"), help="derive the secret (default: RELAY_DEVICE_MASTER_KEY)")
    parser.add_argument("--relay-only", action="store_true", help="use TURN relay candidates only (iceTransportPolicy relay)")
    parser.add_argument("--video", help="a camera (/dev/video0) or a video file instead of the test pattern")
    args = parser.parse_args()
    if not args.secret and not args.master_key:
        parser.error("pass --secret or --master-key (or set RELAY_DEVICE_MASTER_KEY)")
    try:
        asyncio.run(Robot(args).run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
