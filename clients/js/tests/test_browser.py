"""relay-client.js in headless Chromium against the real `relay serve` on loopback.

Each test opens the relay's own page (`/demo`, same origin as the API), imports the library the
relay serves (`/client/relay-client.js`), runs a scenario in the page, and reads its result
through the DevTools protocol. The other party is the Python client library. WebSockets and event
streams are made to fail with DevTools' URL blocking, as a proxy that refuses them would."""
import asyncio
import json
import signal

import pytest

from chromium import Chromium
from relay_client import RelayClient
from relay_process import JWT_SECRET, Relay, app_token, device_secret

# The session scenarios send 82 messages and the re-sent ones again: beyond the relay's limit of
# 50 in a burst per link (contract §5), which the client's pace keeps to (nothing is refused).

# What every scenario starts with: the library, a log, and helpers.
PRELUDE = """
const { RelayClient, RelayRefusedError, PerfectNegotiation } = await import("/client/relay-client.js");
const lines = [];
const options = { log: (line) => lines.push(line) };
"""

SESSION = """
const client = RelayClient.app(location.origin, () => TOKEN, options);
const errors = [];
client.on("error", (message) => errors.push(message));
await client.start();
const link = client.hello.link_id;
const offered = client.next("webrtc_offer");
const credentials = await client.request("robot-1");
const offer = await offered;
client.sendAnswer(credentials.session_id, "v=0 answer");
for (let number = 1; number <= 80; number++) {
  client.sendIce(credentials.session_id, { candidate: "candidate:" + number, sdpMid: "0", sdpMLineIndex: 0 });
  // The network drops the transport mid-stream.
  if (number === 40) client.dropConnection();
}
while (client.connects < 2) await client.next("connected");
await client.acknowledged();
const closed = client.next("webrtc_close");
client.closeSession(credentials.session_id);
const close = await closed;
await client.acknowledged();
const result = { errors: errors.length, transport: client.transport, link, resumedLink: client.hello.link_id, resumed: client.hello.resumed,
  connects: client.connects, offer: offer.sdp, closedBy: close.by, unacked: client.unacked, lines };
client.close();
return JSON.stringify(result);
"""


def scenario(body: str, **constants) -> str:
    """An expression running `body` (with `constants` defined) in the page, as JSON text."""
    definitions = "".join(f"const {name} = {json.dumps(value)};\n" for name, value in constants.items())
    return f"(async () => {{\n{PRELUDE}{definitions}{body}\n}})()"


@pytest.fixture
def relay():
    server = Relay()
    yield server
    server.stop()


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 90))


async def browser_on(relay_server: Relay) -> Chromium:
    browser = Chromium()
    await browser.open()
    await browser.navigate(f"http://127.0.0.1:{relay_server.port}/demo")
    return browser


def run_in_page(relay_server: Relay, body: str, **constants):
    """Runs the scenario `body` in a page of the relay; what it returned, decoded."""
    async def in_page():
        browser = await browser_on(relay_server)
        try:
            return json.loads(await browser.evaluate(scenario(body, **constants)))
        finally:
            await browser.close()

    return run(in_page())


async def robot(url: str, answers: list):
    """A device (the Python library) that offers on each request and collects what comes."""
    async with RelayClient.for_device(url, "robot-1", device_secret("robot-1")) as device:
        request = await device.next("webrtc_request", timeout=30)
        await device.send_offer(request["session_id"], "v=0 offer")
        answers.append((await device.next("webrtc_answer", timeout=30))["sdp"])
        candidates = []
        while len(candidates) < 80:
            message = await device.next("webrtc_ice", timeout=30)
            candidates.append(int(message["candidate"]["candidate"].split(":")[1]))
        answers.append(candidates)
        closed = await device.next("webrtc_close", timeout=30)
        answers.append(closed["by"])


# WebSockets fail as behind a proxy that refuses them: every socket the page opens goes to a
# closed port (DevTools' URL blocking does not apply to WebSockets).
BREAK_WEBSOCKETS = """
window.WebSocket = class extends WebSocket { constructor() { super("ws://127.0.0.1:9/"); } };
"""


def check_session(relay_server: Relay, transport: str, websockets: bool = True, event_streams: bool = True):
    async def scenario_run():
        browser = await browser_on(relay_server)
        try:
            if not websockets:
                await browser.evaluate(BREAK_WEBSOCKETS)
            if not event_streams:
                await browser.block("*/api/link/events*")
            answers = []
            device = asyncio.create_task(robot(relay_server.url, answers))
            while True:  # the device is up before the app asks for it
                await asyncio.sleep(0.05)
                if device.done() or relay_server_has_link(relay_server):
                    break
            result = json.loads(await browser.evaluate(scenario(SESSION, TOKEN=app_token())))
            await asyncio.wait_for(device, 30)
            return result, answers
        finally:
            await browser.close()

    result, answers = run(scenario_run())
    assert result["transport"] == transport and result["errors"] == 0, result
    assert result["offer"] == "v=0 offer" and answers[0] == "v=0 answer", (result, answers)
    # Every candidate once, in order, across the dropped transport; the link resumed.
    assert answers[1] == list(range(1, 81)), answers
    assert result["resumed"] is True and result["resumedLink"] == result["link"] and result["connects"] == 2, result
    assert result["unacked"] == 0 and result["closedBy"] == "app" and answers[2] == "app", (result, answers)


def relay_server_has_link(relay_server: Relay) -> bool:
    """Whether robot-1 is online (GET /api/devices as its owner)."""
    import urllib.request
    request = urllib.request.Request(f"http://127.0.0.1:{relay_server.port}/api/devices", headers={"Authorization": "Bearer " + app_token()})
    try:
        devices = json.load(urllib.request.urlopen(request))["devices"]
    except OSError:
        return False
    return any(device["device_id"] == "robot-1" and device["online"] for device in devices)


def test_a_whole_session_over_websocket_with_a_dropped_socket(relay):
    check_session(relay, "websocket")


def test_without_websockets_the_link_runs_over_server_sent_events(relay):
    check_session(relay, "sse", websockets=False)


def test_without_websockets_or_event_streams_the_link_long_polls(relay):
    check_session(relay, "poll", websockets=False, event_streams=False)


def test_refused_credentials_stop_the_client_with_the_reason(relay):
    app, device, live = run_in_page(relay, """
                const outcomes = [];
                for (const client of [RelayClient.app(location.origin, () => "not-a-token", options),
                                      RelayClient.device(location.origin, "robot-1", "not-the-secret", options)]) {
                  try { await client.start(); outcomes.push("connected"); }
                  catch (error) { outcomes.push({ refused: error instanceof RelayRefusedError, status: error.status, detail: error.detail, connects: client.connects }); }
                }
                const device = RelayClient.device(location.origin, "robot-1", SECRET, options);
                await device.start();
                outcomes.push({ device: device.hello.resumed === false && device.transport });
                device.close();
                return JSON.stringify(outcomes);
            """, SECRET=device_secret("robot-1"))
    assert app["refused"] and app["status"] == 401 and app["connects"] == 0, app
    assert device["refused"] and device["status"] == 401 and "signature" in device["detail"], device
    # A device connects from a browser too (its connect signed with WebCrypto).
    assert live == {"device": "websocket"}, live


def test_a_revoked_device_stops_with_403_and_a_live_one_is_disconnected_for_good(relay):
    secret = relay.device_command("add", "robot-2", "--owner", "alice").strip().splitlines()[-1]

    async def scenario_run():
        browser = await browser_on(relay)
        try:
            await browser.evaluate(scenario("""
                window.live = RelayClient.device(location.origin, "robot-2", SECRET, options);
                await window.live.start();
                window.ended = window.live.next("stopped", 30000).then((message) => message.error);
            """, SECRET=secret))
            relay.device_command("revoke", "robot-2")
            # The relay drops the revoked device's link; its reconnect is refused and it stops.
            return json.loads(await browser.evaluate(scenario("""
                const live = await window.ended;
                const later = RelayClient.device(location.origin, "robot-2", SECRET, options);
                let again = null;
                try { await later.start(); } catch (error) { again = error; }
                return JSON.stringify([live, again].map((error) => ({ refused: error instanceof RelayRefusedError, status: error.status, detail: error.detail })));
            """, SECRET=secret)))
        finally:
            await browser.close()

    live, later = run(scenario_run())
    assert live["refused"] and live["status"] == 403 and live["detail"], live
    assert later["refused"] and later["status"] == 403, later


def test_an_app_token_is_refreshed_before_it_expires():
    # No leeway: the relay closes an app's socket at `exp` without a fresh token (4001).
    relay = Relay(RELAY_JWT_LEEWAY_S="0")

    try:
        result = run_in_page(relay, """
                // The page mints its own 4-second HS256 tokens (a test stands in for the app's backend).
                const encoder = new TextEncoder();
                const b64 = (bytes) => btoa(String.fromCharCode(...bytes)).replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
                const key = await crypto.subtle.importKey("raw", encoder.encode(JWT_SECRET), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
                let minted = 0;
                const token = async () => {
                  minted += 1;
                  const now = Math.floor(Date.now() / 1000);
                  const signing = b64(encoder.encode(JSON.stringify({ alg: "HS256", typ: "JWT" }))) + "." +
                    b64(encoder.encode(JSON.stringify({ sub: "alice", iat: now, exp: now + 4, devices: ["robot-1"] })));
                  return signing + "." + b64(new Uint8Array(await crypto.subtle.sign("HMAC", key, encoder.encode(signing))));
                };
                const client = RelayClient.app(location.origin, token, { ...options, refreshMarginS: 2 });
                await client.start();
                const started = Date.now();
                // Until the fourth token: well past the first one's exp.
                while (minted < 4) await new Promise((resolve) => setTimeout(resolve, 100));
                const ponged = client.next("pong");
                client.send({ type: "ping" });
                await ponged;
                const result = { connects: client.connects, seconds: (Date.now() - started) / 1000, lines };
                client.close();
                return JSON.stringify(result);
            """, JWT_SECRET=JWT_SECRET)
    finally:
        relay.stop()
    # Still the first connection: the token went again with `auth` in time.
    assert result["connects"] == 1 and result["seconds"] >= 4, result
    assert sum("token refreshed" in line for line in result["lines"]) >= 3, result


def test_go_away_is_followed_and_the_link_resumes_on_the_next_process():
    first = Relay(RELAY_SHUTDOWN_DRAIN_S="1")
    servers = [first]

    async def scenario_run():
        browser = await browser_on(first)
        try:
            await browser.evaluate(scenario("""
                window.client = RelayClient.app(location.origin, () => TOKEN, options);
                window.lines = lines;
                await window.client.start();
                window.goAway = window.client.next("go_away", 30000);
                window.resumed = (async () => {
                  while (!(window.client.connects === 2)) await window.client.next("connected", 60000);
                })();
            """, TOKEN=app_token()))
            link = await browser.evaluate("window.client.hello.link_id")
            first.process.send_signal(signal.SIGTERM)
            go_away = await browser.evaluate("window.goAway.then((message) => JSON.stringify(message))")
            await asyncio.get_running_loop().run_in_executor(None, first.process.wait)
            servers.append(Relay(RELAY_PORT=str(first.port), RELAY_DB=first.environment["RELAY_DB"]))
            await browser.evaluate("window.resumed")
            hello = json.loads(await browser.evaluate("JSON.stringify(window.client.hello)"))
            return link, json.loads(go_away), hello
        finally:
            await browser.close()

    try:
        link, go_away, hello = run(scenario_run())
    finally:
        for server in reversed(servers):
            server.stop()
    assert "reconnect_after_ms" in go_away, go_away
    assert hello["resumed"] is True and hello["link_id"] == link, hello


def test_retry_after_is_honoured_when_the_relay_refuses_for_a_while():
    # One connection per 3 s per device: the resume right after a drop is refused (429,
    # Retry-After). A browser cannot read a refused WebSocket's status, so the library asks over
    # HTTP, learns Retry-After, and waits that long once instead of knocking again and again.
    relay = Relay(RELAY_CONNECT_BURST="1", RELAY_CONNECT_RATE_PER_MIN="20")

    try:
        result = run_in_page(relay, """
                const device = RelayClient.device(location.origin, "robot-1", SECRET, options);
                await device.start();
                const dropped = Date.now();
                const resumed = device.next("connected", 30000);
                device.dropConnection();
                const hello = (await resumed).hello;
                const result = { waited: (Date.now() - dropped) / 1000, resumed: hello.resumed, transport: device.transport, lines };
                device.close();
                return JSON.stringify(result);
            """, SECRET=device_secret("robot-1"))
    finally:
        relay.stop()
    refusals = [line for line in result["lines"] if "connect refused (429" in line]
    assert result["resumed"] is True and result["transport"] == "websocket", result
    assert len(refusals) == 1 and result["waited"] >= 2.5, result


def test_perfect_negotiation_connects_two_peers_and_survives_an_ice_restart_glare(relay):
    # An app and a device, both in the page and both on the library, each with a real
    # RTCPeerConnection bound by PerfectNegotiation (the app polite, the device not). The device's
    # data channel connects them; then both restart ICE at once (glare): the polite side rolls
    # back, the connection comes back with new ICE credentials, and data still flows.
    result = run_in_page(relay, """
                const until = async (check, what) => {
                  for (let i = 0; i < 300; i++) { if (check()) return; await new Promise((r) => setTimeout(r, 50)); }
                  throw new Error("timed out waiting for " + what);
                };
                const app = RelayClient.app(location.origin, () => TOKEN, options);
                const device = RelayClient.device(location.origin, "robot-1", SECRET, options);
                await device.start();
                await app.start();
                let devicePc, deviceSide, deviceChannel;
                const received = [];
                device.on("webrtc_request", (message) => {
                  devicePc = new RTCPeerConnection({ iceServers: [] });
                  deviceSide = new PerfectNegotiation(device, message.session_id, devicePc, { polite: false });
                  deviceChannel = devicePc.createDataChannel("chat");
                  deviceChannel.onmessage = (event) => received.push("device got " + event.data);
                });
                const credentials = await app.request("robot-1");
                const appPc = new RTCPeerConnection({ iceServers: [] });
                const appSide = new PerfectNegotiation(app, credentials.session_id, appPc, { polite: true });
                let appChannel;
                appPc.ondatachannel = ({ channel }) => { appChannel = channel; channel.onmessage = (event) => received.push("app got " + event.data); };
                await until(() => appChannel && appChannel.readyState === "open" && appPc.connectionState === "connected", "the data channel");
                deviceChannel.send("one");
                await until(() => received.length === 1, "the first message");
                const ufrag = (pc) => pc.remoteDescription.sdp.match(/a=ice-ufrag:(\\S+)/)[1];
                const before = [ufrag(appPc), ufrag(devicePc)];
                appSide.restartIce();
                deviceSide.restartIce();
                await until(() => ufrag(appPc) !== before[0] && ufrag(devicePc) !== before[1] &&
                  appPc.signalingState === "stable" && devicePc.signalingState === "stable" &&
                  appPc.connectionState === "connected" && devicePc.connectionState === "connected", "the ICE restart");
                appChannel.send("two");
                await until(() => received.length === 2, "the second message");
                const result = { received, restarts: [appSide.restarts, deviceSide.restarts], states: [appPc.connectionState, devicePc.connectionState] };
                const closed = Promise.all([device.next("webrtc_close"), app.next("webrtc_close")]);
                app.closeSession(credentials.session_id);
                await closed;
                result.closedStates = [appPc.signalingState, devicePc.signalingState];
                app.close();
                device.close();
                return JSON.stringify(result);
            """, TOKEN=app_token(), SECRET=device_secret("robot-1"))
    assert result["received"] == ["app got one", "device got two"], result
    assert result["restarts"] == [1, 1] and result["states"] == ["connected", "connected"], result
    # webrtc_close closes both peer connections through their negotiation helpers.
    assert result["closedStates"] == ["closed", "closed"], result
