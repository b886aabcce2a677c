"""The Python client against the real `relay serve` on loopback (no stand-in of the relay)."""
import asyncio
import signal
import time

import pytest

from relay_client import RelayClient, RelayRefused
from relay_process import Relay, app_token, device_secret


@pytest.fixture
def relay():
    server = Relay()
    yield server
    server.stop()


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


def test_an_app_and_a_device_have_a_whole_session(relay):
    async def scenario():
        async with RelayClient.for_device(relay.url, "robot-1", device_secret("robot-1")) as device, \
                RelayClient.app(relay.url, lambda: app_token()) as app:
            assert device.hello["resumed"] is False and app.hello["link_id"]
            credentials = await app.request("robot-1")
            session = credentials["session_id"]
            assert credentials["ice_servers"]["iceServers"]
            request = await device.next("webrtc_request")
            assert request["session_id"] == session and request["user_id"] == "alice"
            await device.send_offer(session, "v=0 offer")
            assert (await app.next("webrtc_offer"))["sdp"] == "v=0 offer"
            await app.send_answer(session, "v=0 answer")
            answer = await device.next("webrtc_answer")
            assert answer["sdp"] == "v=0 answer" and answer["peer_cseq"] >= 1
            await app.send_ice(session, {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0"})
            assert (await device.next("webrtc_ice"))["candidate"]["candidate"].startswith("candidate:1")
            await app.close_session(session)
            for client in (app, device):
                closed = await client.next("webrtc_close")
                assert closed["session_id"] == session and closed["by"] == "app"
            # Everything the app sent was acked.
            for _ in range(100):
                if app.unacked == 0 and device.unacked == 0:
                    break
                await asyncio.sleep(0.05)
            assert app.unacked == 0 and device.unacked == 0

    run(scenario())


def test_a_dropped_socket_resumes_the_link_and_nothing_is_lost_or_doubled(relay):
    async def scenario():
        async with RelayClient.for_device(relay.url, "robot-1", device_secret("robot-1")) as device, \
                RelayClient.app(relay.url, lambda: app_token()) as app:
            session = (await app.request("robot-1"))["session_id"]
            await device.next("webrtc_request")
            link = app.hello["link_id"]
            for number in range(1, 51):
                await app.send_ice(session, {"candidate": f"candidate:{number}"})
                if number == 25:
                    # The network drops the app's socket mid-stream.
                    app._socket.transport.abort()
            received = []
            while len(received) < 50:
                message = await device.next("webrtc_ice", "peer_status")
                if message["type"] == "webrtc_ice":
                    received.append(int(message["candidate"]["candidate"].split(":")[1]))
            assert received == list(range(1, 51))
            assert app.hello["link_id"] == link and app.hello["resumed"] is True and app.connects == 2

    run(scenario())


def test_a_refused_device_stops_with_the_reason_instead_of_retrying(relay):
    async def scenario():
        client = RelayClient.for_device(relay.url, "robot-1", "not-the-secret")
        with pytest.raises(RelayRefused) as refused:
            await client.start()
        assert refused.value.status == 401 and "signature" in refused.value.detail
        assert client.connects == 0

    run(scenario())


def test_an_app_token_is_refreshed_before_it_expires():
    # No leeway: the relay closes an app's socket at `exp` without a fresh token (4001).
    relay = Relay(RELAY_JWT_LEEWAY_S="0")

    async def scenario():
        minted = []

        def provider():
            minted.append(time.time())
            return app_token(lifetime=4)

        async with RelayClient.app(relay.url, provider, refresh_margin=2) as app:
            link = app.hello["link_id"]
            await asyncio.sleep(7)
            # Still the same socket, never closed: the token went again with `auth` in time.
            assert app.connects == 1 and app.hello["link_id"] == link
            await app.send({"type": "ping", "request_id": "after"})
            assert (await app.next("pong"))["request_id"] == "after"
            assert len(minted) >= 3

    try:
        run(scenario())
    finally:
        relay.stop()


def test_go_away_is_followed_and_the_link_resumes_on_the_next_process():
    first = Relay(RELAY_SHUTDOWN_DRAIN_S="1")
    store = first.environment["RELAY_DB"]
    servers = [first]

    async def scenario():
        async with RelayClient.app(first.url, lambda: app_token()) as app:
            link = app.hello["link_id"]
            # SIGTERM: the relay says go_away (and refuses new links with 503 + Retry-After while
            # it drains); the client leaves, and comes back to the next process on the same store.
            first.process.send_signal(signal.SIGTERM)
            go_away = await app.next("go_away")
            assert "reconnect_after_ms" in go_away
            await asyncio.get_running_loop().run_in_executor(None, first.process.wait)
            servers.append(Relay(RELAY_PORT=str(first.port), RELAY_DB=store))
            for _ in range(200):
                if app.connects == 2:
                    break
                await asyncio.sleep(0.05)
            assert app.connects == 2 and app.hello["resumed"] is True and app.hello["link_id"] == link

    try:
        run(scenario())
    finally:
        for server in reversed(servers):
            server.stop()


def test_a_revoked_device_stops_with_403_and_a_live_one_is_disconnected_for_good(relay):
    secret = relay.device_command("add", "robot-2", "--owner", "alice").strip().splitlines()[-1]

    async def scenario():
        live = RelayClient.for_device(relay.url, "robot-2", secret)
        await live.start()
        relay.device_command("revoke", "robot-2")
        # The relay drops the revoked device's socket; its reconnect is refused and it stops.
        with pytest.raises(RelayRefused) as refused:
            await live.next("never", timeout=20)
        assert refused.value.status == 403
        later = RelayClient.for_device(relay.url, "robot-2", secret)
        with pytest.raises(RelayRefused) as again:
            await later.start()
        assert again.value.status == 403 and again.value.detail

    run(scenario())


def test_retry_after_is_honoured_when_the_relay_refuses_for_a_while():
    # One connection per 3 s per device: the resume right after a drop is refused (429,
    # Retry-After). The client waits that long once, instead of knocking again and again.
    relay = Relay(RELAY_CONNECT_BURST="1", RELAY_CONNECT_RATE_PER_MIN="20")
    lines = []

    async def scenario():
        async with RelayClient.for_device(relay.url, "robot-1", device_secret("robot-1"), log=lines.append) as device:
            dropped = time.monotonic()
            await device.drop_socket()
            while not (await device.next("connected", timeout=30))["hello"].get("resumed"):
                pass
            return time.monotonic() - dropped, device.hello

    try:
        waited, hello = run(scenario())
    finally:
        relay.stop()
    refusals = [line for line in lines if "connect refused (429" in line]
    assert hello["resumed"] is True, hello
    assert len(refusals) == 1 and waited >= 2.5, (waited, lines)


def test_a_burst_beyond_the_relays_limit_is_paced_and_nothing_is_refused(relay):
    # 100 messages at once, twice the relay's burst of 50 per link: sent as the limit allows.
    async def scenario():
        async with RelayClient.for_device(relay.url, "robot-1", device_secret("robot-1")) as device, \
                RelayClient.app(relay.url, lambda: app_token()) as app:
            session = (await app.request("robot-1"))["session_id"]
            await device.next("webrtc_request")
            sending = asyncio.gather(*(app.send_ice(session, {"candidate": f"candidate:{n}"}) for n in range(1, 101)))
            received = []
            while len(received) < 100:
                message = await device.next("webrtc_ice")
                received.append(int(message["candidate"]["candidate"].split(":")[1]))
            await sending
            assert received == list(range(1, 101))
            await app.close()
            errors = [message async for message in app if message["type"] == "error"]
            assert errors == []

    run(scenario())
