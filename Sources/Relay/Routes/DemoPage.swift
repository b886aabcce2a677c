/// `GET /demo`: a browser page that opens a session with a robot.
import Hummingbird

/// `GET /demo`: a browser app client in plain JavaScript (no build step). It takes an app token,
/// lists the user's devices with presence, starts a session with Perfect Negotiation (the app is
/// the polite side), shows the robot's video with basic stats, and hangs up. Query parameters
/// fill the form: `token`, `device`, `relay_only=1` (TURN only), `autostart=1`.
enum DemoPage {
    static func response() -> Response {
        Response(
            status: .ok,
            headers: [.contentType: "text/html; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: html))
        )
    }

    static let html = #"""
        <!doctype html>
        <html lang="en">
        <meta charset="utf-8">
        <title>Relay demo</title>
        <style>
          body { font: 15px system-ui, sans-serif; margin: 1.5em; max-width: 60em; }
          input[type=text] { width: 100%; box-sizing: border-box; font: 13px monospace; }
          video { width: 640px; max-width: 100%; background: #111; display: block; margin: 1em 0; }
          pre { background: #f4f4f4; padding: .6em; font-size: 12px; }
          li { margin: .2em 0; }
          .online { color: #080; } .offline { color: #999; }
        </style>
        <h1>Relay demo</h1>
        <p><label>App token (JWT) <input type="text" id="token"></label></p>
        <p><button id="load">List my devices</button> <label><input type="checkbox" id="relayOnly"> TURN relay only</label></p>
        <ul id="devices"></ul>
        <p>Device <input type="text" id="device" style="width: 16em"> <button id="start">Start</button> <button id="hangup" disabled>Hang up</button></p>
        <video id="video" autoplay playsinline muted></video>
        <pre id="status">idle</pre>
        <pre id="stats"></pre>
        <script>
        "use strict";
        const $ = (id) => document.getElementById(id);
        const params = new URLSearchParams(location.search);
        $("token").value = params.get("token") || "";
        $("device").value = params.get("device") || "";
        $("relayOnly").checked = params.get("relay_only") === "1";
        const log = (text) => { $("status").textContent = text + "\n" + $("status").textContent.split("\n").slice(0, 12).join("\n"); };
        window.demo = { framesDecoded: 0, pair: null, state: "idle" };

        // The relay link: hello, seq, ack, and resume after a dropped socket (contract §4); every
        // message numbered with cseq and kept until acked, sent again after a resume, and a
        // forwarded message whose peer_cseq was seen already ignored (contract §11).
        const link = { socket: null, resumeToken: null, lastSeq: 0, handlers: {}, cseq: 0, unacked: [], peerCseqs: {} };
        function acked(cseq) { while (link.unacked.length && link.unacked[0].cseq <= cseq) link.unacked.shift(); }
        function connect() {
          const base = (location.protocol === "https:" ? "wss://" : "ws://") + location.host;
          let url = base + "/ws/app?token=" + encodeURIComponent($("token").value.trim());
          if (link.resumeToken) url += "&resume_token=" + encodeURIComponent(link.resumeToken) + "&last_seq=" + link.lastSeq;
          const socket = new WebSocket(url);
          link.socket = socket;
          socket.onmessage = (event) => {
            const message = JSON.parse(event.data);
            if (message.type === "hello") {
              if (message.resumed) acked(message.acked_cseq || 0);
              else if (link.resumeToken) { link.lastSeq = 0; link.unacked = []; link.peerCseqs = {}; }
              link.resumeToken = message.resume_token;
              log("link " + (message.resumed ? "resumed" : "opened"));
              for (const kept of link.unacked) socket.send(JSON.stringify(kept));
              return;
            }
            if (message.type === "ack" && message.seq === undefined) { acked(message.cseq); return; }
            if (message.seq <= link.lastSeq) return;
            link.lastSeq = message.seq;
            if (message.seq % 20 === 0) send({ type: "ack", seq: message.seq });
            if (message.peer_cseq !== undefined && message.session_id) {
              if (message.peer_cseq <= (link.peerCseqs[message.session_id] || 0)) return;
              link.peerCseqs[message.session_id] = message.peer_cseq;
            }
            (link.handlers[message.type] || (() => log(JSON.stringify(message))))(message);
          };
          socket.onclose = () => { if (link.socket === socket && !link.closed) setTimeout(connect, 500); };
        }
        function send(message) {
          if (message.type !== "ack") {
            message = { ...message, cseq: ++link.cseq };
            link.unacked.push(message);
          }
          if (link.socket && link.socket.readyState === WebSocket.OPEN) link.socket.send(JSON.stringify(message));
        }

        $("load").onclick = async () => {
          const answer = await fetch("/api/devices", { headers: { Authorization: "Bearer " + $("token").value.trim() } });
          const body = await answer.json();
          if (!answer.ok) { log("devices: " + body.detail); return; }
          $("devices").replaceChildren(...body.devices.map((device) => {
            const item = document.createElement("li");
            item.className = device.online ? "online" : "offline";
            item.textContent = device.device_id + (device.online ? " online, " + device.sessions + " session(s)" : " offline") +
              (device.last_seen_at ? " (seen " + device.last_seen_at + ")" : "");
            item.onclick = () => { $("device").value = device.device_id; };
            return item;
          }));
          if (!link.socket) connect();
          send({ type: "watch", device_ids: body.devices.map((device) => device.device_id) });
        };
        link.handlers.device_status = (message) => log(message.device_id + (message.online ? " online" : " offline") + ", " + message.sessions + " session(s)");

        // One session, Perfect Negotiation with the app as the polite peer.
        let session = null;
        function startSession() {
          if (!link.socket) connect();
          send({ type: "webrtc_request", device_id: $("device").value.trim() });
          window.demo.state = "requested";
          log("asking for " + $("device").value.trim());
        }
        link.handlers.error = (message) => log("error " + message.code + ": " + message.message);
        link.handlers.webrtc_credentials = (message) => {
          const pc = new RTCPeerConnection({ iceServers: message.ice_servers.iceServers, iceTransportPolicy: $("relayOnly").checked ? "relay" : "all" });
          session = { id: message.session_id, pc, makingOffer: false, ignoreOffer: false };
          pc.ontrack = (event) => { $("video").srcObject = event.streams[0] || new MediaStream([event.track]); };
          pc.onicecandidate = ({ candidate }) => send(candidate
            ? { type: "webrtc_ice", session_id: session.id, candidate: candidate.toJSON() }
            : { type: "webrtc_ice", session_id: session.id, candidate: null, complete: true });
          pc.onnegotiationneeded = async () => {
            try {
              session.makingOffer = true;
              await pc.setLocalDescription();
              send({ type: "webrtc_offer", session_id: session.id, sdp: pc.localDescription.sdp });
            } finally { session.makingOffer = false; }
          };
          pc.ondatachannel = ({ channel }) => { channel.onmessage = (event) => log("data: " + event.data); };
          pc.onconnectionstatechange = () => { window.demo.state = pc.connectionState; log("connection " + pc.connectionState); };
          $("hangup").disabled = false;
          log("session " + session.id);
        };
        async function describe(description) {
          if (!session) return;
          const pc = session.pc;
          const collision = description.type === "offer" && (session.makingOffer || pc.signalingState !== "stable");
          session.ignoreOffer = false; // polite: never ignore, roll back instead
          await pc.setRemoteDescription(description);
          if (description.type === "offer") {
            await pc.setLocalDescription();
            send({ type: "webrtc_answer", session_id: session.id, sdp: pc.localDescription.sdp });
          }
          if (collision) log("offer collision, rolled back (polite)");
        }
        link.handlers.webrtc_offer = (message) => describe({ type: "offer", sdp: message.sdp });
        link.handlers.webrtc_answer = (message) => describe({ type: "answer", sdp: message.sdp });
        link.handlers.webrtc_ice = async (message) => {
          if (!session) return;
          for (const candidate of message.candidates || [message.candidate]) {
            try { await session.pc.addIceCandidate(candidate || null); } catch (error) { if (!session.ignoreOffer) log("candidate: " + error); }
          }
        };
        link.handlers.ice_servers_refresh = (message) => {
          if (session) session.pc.setConfiguration({ ...session.pc.getConfiguration(), iceServers: message.ice_servers.iceServers });
        };
        link.handlers.peer_status = (message) => log("robot " + message.status);
        link.handlers.webrtc_close = (message) => {
          log("session closed: " + message.reason + " by " + message.by);
          if (session) session.pc.close();
          session = null;
          window.demo.state = "closed";
          $("hangup").disabled = true;
        };
        link.handlers.go_away = () => log("relay restarting; will reconnect");
        $("start").onclick = startSession;
        $("hangup").onclick = () => { if (session) send({ type: "webrtc_close", session_id: session.id, reason: "normal" }); };

        setInterval(async () => {
          if (!session) return;
          const stats = await session.pc.getStats();
          let text = "";
          stats.forEach((report) => {
            if (report.type === "inbound-rtp" && report.kind === "video") {
              window.demo.framesDecoded = report.framesDecoded || 0;
              text += "video " + report.frameWidth + "x" + report.frameHeight + ", " + report.framesDecoded + " frames decoded, " + report.bytesReceived + " bytes\n";
            }
            if (report.type === "candidate-pair" && report.nominated && report.state === "succeeded") {
              const local = stats.get(report.localCandidateId), remote = stats.get(report.remoteCandidateId);
              window.demo.pair = [local && local.candidateType, remote && remote.candidateType];
              text += "pair " + window.demo.pair.join("/") + ", rtt " + report.currentRoundTripTime + " s\n";
            }
          });
          $("stats").textContent = text;
        }, 500);
        if (params.get("autostart") === "1") { connect(); startSession(); }
        </script>
        """#
}
