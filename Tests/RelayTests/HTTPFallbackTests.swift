import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import Testing

/// Contract §7: the same links and messages over Server-Sent Events, `POST /api/link/send` and
/// long-polling, for networks that break WebSockets.
@Suite(.timeLimit(.minutes(1))) struct HTTPFallbackTests {
    static let pairs = Transport.allCases.flatMap { app in Transport.allCases.map { device in (app, device) } }

    @Test(arguments: pairs)
    func aWholeSessionWorksOverEveryPairOfTransports(app appTransport: Transport, device deviceTransport: Transport) async throws {
        try await TestRelay.run { relay in
            let device = try await relay.party(deviceTransport)
            let app = try await relay.party(appTransport, app: "alice")
            #expect(device.hello["type"] as? String == "hello" && app.hello["resumed"] as? Bool == false)
            var seen: [String: Int] = [:]
            func next(_ party: any Party, _ name: String, _ type: String) async throws -> JSONObject {
                let message = try await party.next(type)
                let seq = try #require(message["seq"] as? Int)
                #expect(seq == (seen[name] ?? 0) + 1, "\(name) gets every seq in order")
                seen[name] = seq
                return message
            }

            try await app.send(["type": "webrtc_request", "device_id": "robot-1", "request_id": "r1"])
            let credentials = try await next(app, "app", "webrtc_credentials")
            #expect(credentials["request_id"] as? String == "r1")
            let sessionID = try #require(credentials["session_id"] as? String)
            let request = try await next(device, "device", "webrtc_request")
            #expect(request["session_id"] as? String == sessionID && request["user_id"] as? String == "alice")

            try await device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 offer"])
            #expect(try await next(app, "app", "webrtc_offer")["sdp"] as? String == "v=0 offer")
            try await app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0 answer"])
            #expect(try await next(device, "device", "webrtc_answer")["sdp"] as? String == "v=0 answer")
            let candidate: JSONObject = ["candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host", "sdpMid": "0", "sdpMLineIndex": 0]
            try await app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": candidate])
            #expect((try await next(device, "device", "webrtc_ice")["candidate"] as? JSONObject)?["sdpMid"] as? String == "0")
            try await device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": candidate])
            _ = try await next(app, "app", "webrtc_ice")

            // The same errors as on a WebSocket, on the link.
            try await app.send(["type": "webrtc_offer", "session_id": "no-such-session", "sdp": "v=0"])
            #expect(try await next(app, "app", "error")["code"] as? String == "unknown_session")
            try await device.send(["type": "launch_rockets"])
            #expect(try await next(device, "device", "error")["code"] as? String == "bad_request")

            try await app.send(["type": "webrtc_close", "session_id": sessionID])
            #expect(try await next(device, "device", "webrtc_close")["by"] as? String == "app")
            #expect(try await next(app, "app", "webrtc_close")["reason"] as? String == "normal")
            let row = try await eventually("the audit row") {
                try await relay.store.auditLog().first { $0.sessionID == sessionID && $0.closedAt != nil }
            }
            #expect(row.closeReason == "normal" && row.answeredAt != nil)
            await app.vanish()
            await device.vanish()
        }
    }

    @Test func eventStreamHasTheRightHeadersKeepalivesAndResumesWithLastEventID() async throws {
        try await TestRelay.run(["RELAY_SSE_KEEPALIVE_S": "1"]) { relay in
            let device = try await relay.device()
            let hello = try await openHTTPLink(port: relay.port, .app(token: relay.appToken()))
            let first = try await EventStreamParty(port: relay.port, hello: hello)
            #expect(first.stream.head.status == 200)
            #expect(first.stream.head.headers["content-type"] == "text/event-stream")
            #expect(first.stream.head.headers["cache-control"] == "no-cache")
            try await first.send(["type": "webrtc_request", "device_id": "robot-1"])
            let sessionID = try #require(try await first.next("webrtc_credentials")["session_id"] as? String)
            _ = try await device.next("webrtc_request")
            try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 1"])
            #expect(try await first.next("webrtc_offer")["seq"] as? Int == 2)
            // A keepalive comment arrives while nothing else does.
            _ = try await eventually("a keepalive") { first.stream.text.contains("\n: keepalive\n") ? true : nil }

            // The stream drops; what the device sends meanwhile is kept for the app.
            await first.vanish()
            for n in 2...4 { try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 \(n)"]) }
            #expect(try await device.next("peer_status")["status"] as? String == "reconnecting")
            let resumed = try await EventStreamParty(port: relay.port, hello: hello, lastEventID: 2)
            for n in 2...4 {
                let offer = try await resumed.next("webrtc_offer")
                #expect(offer["sdp"] as? String == "v=0 \(n)")
                #expect(offer["seq"] as? Int == n + 1)
            }
            #expect(try await device.next("peer_status")["status"] as? String == "connected")
            try await resumed.send(["type": "ping"])
            _ = try await resumed.next("pong")
        }
    }

    @Test func anEventStreamClosedByItsClientIsNoticedAtOnce() async throws {
        // Keepalives far apart: the close must be noticed without writing to the stream.
        try await TestRelay.run(["RELAY_SSE_KEEPALIVE_S": "30"]) { relay in
            let device = try await relay.device()
            let hello = try await openHTTPLink(port: relay.port, .app(token: relay.appToken()))
            let app = try await EventStreamParty(port: relay.port, hello: hello)
            try await app.send(["type": "webrtc_request", "device_id": "robot-1"])
            _ = try await app.next("webrtc_credentials")
            _ = try await device.next("webrtc_request")
            let closedAt = ContinuousClock.now
            await app.vanish()
            #expect(try await device.next("peer_status")["status"] as? String == "reconnecting")
            #expect(ContinuousClock.now - closedAt < .seconds(1))
        }
    }

    @Test func anHTTPLinkResumesWithItsTokenOnAnyTransport() async throws {
        try await TestRelay.run { relay in
            let hello = try await openHTTPLink(port: relay.port, .device(query: relay.deviceQuery()))
            let app = try await relay.app()
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull()])
            try await app.expectNothingPending()
            // The device got the request by polling, then comes back over HTTP with its token...
            let http = HTTPClient(port: relay.port)
            #expect(try await Self.poll(http, hello, ["last_seq": 0, "wait": false]).seqs == [1, 2])
            let again = try await openHTTPLink(
                port: relay.port,
                .device(query: relay.deviceQuery()),
                resume: ["resume_token": hello.resumeToken, "last_seq": 1]
            )
            #expect(again.linkID == hello.linkID)
            #expect(again.object["resumed"] as? Bool == true)
            // ...and over a WebSocket, which replays what is unacked after last_seq.
            let socket = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&resume_token=\(hello.resumeToken)&last_seq=1"
            )
            #expect(socket.hello["resumed"] as? Bool == true)
            #expect(try await socket.next("webrtc_ice")["seq"] as? Int == 2)
            try socket.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0"])
            _ = try await app.next("webrtc_offer")
            await http.shutdown()
        }
    }

    @Test func anExpiredAppTokenEndsTheHTTPTransportLikeASocketsClose4001() async throws {
        try await TestRelay.run(["RELAY_JWT_LEEWAY_S": "0", "RELAY_SSE_KEEPALIVE_S": "1"]) { relay in
            // A few seconds: a loaded machine may take one to open the link.
            let token = relay.appToken(lifetime: 4)
            let hello = try await openHTTPLink(port: relay.port, .app(token: token))
            let stream = try await EventStreamParty(port: relay.port, hello: hello)
            // Past exp the stream ends with the close a WebSocket would get...
            let closed = try await stream.next("sse:close")
            let close = try #require(try JSONSerialization.jsonObject(with: Data((closed["data"] as? String ?? "").utf8)) as? JSONObject)
            #expect(close["code"] as? Int == 4001)
            // ...and the link's requests are refused until it is opened again with a fresh token.
            let http = HTTPClient(port: relay.port)
            let refused = try await http.post("/api/link/poll", json: ["link_id": hello.linkID, "resume_token": hello.resumeToken, "wait": false])
            #expect(refused.status == .unauthorized)
            #expect((refused.json["detail"] as? String)?.hasPrefix("App token has expired") == true)
            let again = try await openHTTPLink(
                port: relay.port,
                .app(token: relay.appToken()),
                resume: ["resume_token": hello.resumeToken, "last_seq": 0]
            )
            #expect(again.linkID == hello.linkID && again.object["resumed"] as? Bool == true)
            await http.shutdown()
            await stream.vanish()
        }
    }

    @Test func linkRequestsNeedTheirLinksToken() async throws {
        try await TestRelay.run { relay in
            let hello = try await openHTTPLink(port: relay.port, .device(query: relay.deviceQuery()))
            let http = HTTPClient(port: relay.port)
            var answer = try await http.post("/api/link/send", json: ["link_id": hello.linkID, "resume_token": "wrong", "messages": [JSONObject]()])
            #expect(answer.status == .unauthorized)
            #expect(answer.json["detail"] as? String == "resume_token does not match this link")
            answer = try await http.post("/api/link/poll", json: ["link_id": "no-such-link", "resume_token": hello.resumeToken])
            #expect(answer.status == .notFound)
            answer = try await http.post("/api/link/poll", json: ["resume_token": hello.resumeToken])
            #expect(answer.status == .badRequest)
            let stream = try await SSEClient.connect(port: relay.port, path: "/api/link/events?link_id=\(hello.linkID)&resume_token=wrong")
            #expect(stream.head.status == 401)
            #expect(stream.errorBody.contains("resume_token does not match this link"))
            // Opening a link needs the same credentials as a WebSocket.
            answer = try await http.post("/api/link", json: nil)
            #expect(answer.status == .unauthorized)
            answer = try await http.post("/api/link?\(relay.deviceQuery(secret: "wrong-secret"))", json: nil)
            #expect(answer.status == .unauthorized)
            #expect(answer.json["detail"] as? String == "Device signature is invalid")
            // Too large: refused whole, nothing handled.
            let big = String(repeating: "a", count: 70 * 1024)
            answer = try await http.post(
                "/api/link/send",
                json: ["link_id": hello.linkID, "resume_token": hello.resumeToken, "messages": [["type": "ping"], ["type": "ping", "pad": big]]]
            )
            #expect(answer.status == .contentTooLarge)
            answer = try await http.post(
                "/api/link/poll",
                json: ["link_id": hello.linkID, "resume_token": hello.resumeToken, "last_seq": 0, "wait": false]
            )
            #expect((answer.json["messages"] as? [JSONObject])?.isEmpty == true)
            await http.shutdown()
        }
    }

    /// Polls `link` once; the messages' seqs and how long the poll took.
    static func poll(_ http: HTTPClient, _ hello: Hello, _ fields: JSONObject) async throws -> (seqs: [Int], types: [String], elapsed: Duration) {
        var body: JSONObject = ["link_id": hello.linkID, "resume_token": hello.resumeToken]
        body.merge(fields) { _, new in new }
        let start = ContinuousClock.now
        let answer = try await http.post("/api/link/poll", json: body)
        #expect(answer.status == .ok, "\(answer.json)")
        let messages = answer.json["messages"] as? [JSONObject] ?? []
        return (messages.compactMap { $0["seq"] as? Int }, messages.compactMap { $0["type"] as? String }, ContinuousClock.now - start)
    }

    @Test func pollsAckByLastSeqAndDeliverOnlyWhatIsUnacked() async throws {
        try await TestRelay.run { relay in
            let hello = try await openHTTPLink(port: relay.port, .device(query: relay.deviceQuery()))
            let app = try await relay.app()
            let http = HTTPClient(port: relay.port)
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
            for _ in 0..<3 { try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull()]) }
            try await app.expectNothingPending()

            var answer = try await Self.poll(http, hello, ["last_seq": 0, "wait": false])
            #expect(answer.seqs == [1, 2, 3, 4])
            #expect(answer.types == ["webrtc_request", "webrtc_ice", "webrtc_ice", "webrtc_ice"])
            // That answer was lost after the client had processed only 1: the rest again, and
            // only that.
            answer = try await Self.poll(http, hello, ["last_seq": 1, "wait": false])
            #expect(answer.seqs == [2, 3, 4])
            // Acked everything: nothing again.
            answer = try await Self.poll(http, hello, ["last_seq": 4, "wait": false])
            #expect(answer.seqs.isEmpty)
            // A waiting poll answers as soon as a message arrives.
            async let waiting = Self.poll(http, hello, ["last_seq": 4, "timeout_ms": 10_000])
            try await Task.sleep(for: .milliseconds(200))
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull()])
            let woken = try await waiting
            #expect(woken.seqs == [5])
            #expect(woken.elapsed < .seconds(5))
            // Acked messages are gone: an older last_seq cannot be replayed.
            let gone = try await http.post("/api/link/poll", json: ["link_id": hello.linkID, "resume_token": hello.resumeToken, "last_seq": 1])
            #expect(gone.status == .gone)
            await http.shutdown()
        }
    }

    @Test func pollTimeoutIsClampedAndWaitFalseAnswersAtOnce() async throws {
        try await TestRelay.run { relay in
            var links: [Hello] = []
            for n in 1...4 { links.append(try await openHTTPLink(port: relay.port, .device(query: relay.deviceQuery("robot-\(n)")))) }
            let clients = (0..<4).map { _ in HTTPClient(port: relay.port) }
            async let short = Self.poll(clients[0], links[0], ["timeout_ms": 1])
            async let long = Self.poll(clients[1], links[1], ["timeout_ms": 600_000])
            async let standard = Self.poll(clients[2], links[2], [:])
            async let immediate = Self.poll(clients[3], links[3], ["wait": false, "timeout_ms": 10_000])
            let (a, b, c, d) = try await (short, long, standard, immediate)
            #expect(a.elapsed >= .milliseconds(100) && a.elapsed < .seconds(3), "\(a.elapsed)")
            #expect(b.elapsed >= .seconds(15) && b.elapsed < .seconds(20), "\(b.elapsed)")
            #expect(c.elapsed >= .seconds(5) && c.elapsed < .seconds(9), "\(c.elapsed)")
            #expect(d.elapsed < .seconds(2), "\(d.elapsed)")
            for client in clients { await client.shutdown() }
        }
    }

    @Test func aSecondPollEndsTheWaitingOneWithAnEmptyAnswer() async throws {
        try await TestRelay.run { relay in
            let hello = try await openHTTPLink(port: relay.port, .device(query: relay.deviceQuery()))
            let (one, two) = (HTTPClient(port: relay.port), HTTPClient(port: relay.port))
            // Two polls at once: whichever the relay takes second ends the other at once.
            try await withThrowingTaskGroup(of: (seqs: [Int], types: [String], elapsed: Duration).self) { group in
                for client in [one, two] { group.addTask { try await Self.poll(client, hello, ["timeout_ms": 10_000]) } }
                let ended = try #require(try await group.next())
                #expect(ended.seqs.isEmpty)
                #expect(ended.elapsed < .seconds(5))
                let app = try await relay.app()
                try app.send(["type": "webrtc_request", "device_id": "robot-1"])
                _ = try await app.next("webrtc_credentials")
                #expect(try await group.next()?.seqs == [1])
            }
            await one.shutdown()
            await two.shutdown()
        }
    }

    @Test func aClientThatVanishesMidPollLosesNothingAndIsNotHeldForever() async throws {
        // A grace (and so a poll's lease) long enough that a loaded machine reads the vanishing
        // poll before the last poll's lease runs out (3 s was not, with every suite running at
        // once on two cores: the lease ended first, and the late poll attached again).
        try await TestRelay.run(["RELAY_RESUME_GRACE_S": "6"]) { relay in
            let hello = try await openHTTPLink(port: relay.port, .device(query: relay.deviceQuery()))
            let app = try await relay.app()
            let http = HTTPClient(port: relay.port)
            // The device polls once (so the session can open), then vanishes in its next poll.
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
            #expect(try await Self.poll(http, hello, ["last_seq": 0, "wait": false]).seqs == [1])
            let body = #"{"link_id":"\#(hello.linkID)","resume_token":"\#(hello.resumeToken)","last_seq":1,"timeout_ms":500}"#
            try await AbruptClient.postThenVanish(port: relay.port, path: "/api/link/poll", body: body)
            // The dead poll is noticed when its connection goes (or, had the relay not read it
            // yet, when the last poll's lease runs out): the link detaches.
            #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull()])
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull()])
            try await app.expectNothingPending()
            // Nothing sent meanwhile is lost: the next poll gets both, and the link is back.
            #expect(try await Self.poll(http, hello, ["last_seq": 1, "wait": false]).seqs == [2, 3])
            #expect(try await app.next("peer_status")["status"] as? String == "connected")

            // Vanishing for good: the link detaches as soon as the poll's connection is gone
            // (not after the poll's timeout and a lease), and ends after the resume grace.
            let start = ContinuousClock.now
            try await AbruptClient.postThenVanish(
                port: relay.port,
                path: "/api/link/poll",
                body: body.replacingOccurrences(of: "\"last_seq\":1", with: "\"last_seq\":3")
            )
            #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")
            // Through the poll's timeout and a lease it would take 6.5 s or more.
            #expect(ContinuousClock.now - start < .seconds(2))
            let closed = try await app.next("webrtc_close")
            #expect(closed["reason"] as? String == "peer_disconnected")
            #expect(ContinuousClock.now - start < .seconds(13))
            await http.shutdown()
        }
    }
}
