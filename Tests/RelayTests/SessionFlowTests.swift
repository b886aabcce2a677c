import Foundation
import Relay
import RelayTestSupport
import Testing

/// An app and a robot meet, set up a call, negotiate and hang up, through the real relay.
@Suite(.timeLimit(.minutes(1))) struct SessionFlowTests {
    @Test func everyLinkStartsWithHelloWithoutSeq() async throws {
        try await TestRelay.run { relay in
            let app = try await relay.app()
            let hello = app.hello
            #expect(hello["type"] as? String == "hello")
            #expect((hello["link_id"] as? String)?.isEmpty == false)
            // 256 random bits, base64url without padding.
            #expect((hello["resume_token"] as? String)?.count == 43)
            #expect(hello["heartbeat_ms"] as? Int == 20000)
            #expect(hello["resume_grace_ms"] as? Int == 30000)
            #expect(hello["resumed"] as? Bool == false)
            #expect(hello["seq"] == nil)
            let device = try await relay.device()
            #expect(device.hello["link_id"] as? String != hello["link_id"] as? String)
        }
    }

    @Test func appAndDeviceSetUpNegotiateAndHangUp() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            try app.send(["type": "webrtc_request", "device_id": "robot-1", "request_id": "req-1", "metadata": ["camera": "front"]])

            let credentials = try await app.next("webrtc_credentials")
            let sessionID = try #require(credentials["session_id"] as? String)
            #expect(credentials["device_id"] as? String == "robot-1")
            #expect(credentials["request_id"] as? String == "req-1")
            #expect(credentials["seq"] as? Int == 1)
            let iceServers = try #require(credentials["ice_servers"] as? JSONObject)
            #expect(iceServers["ttl"] as? Int == 3600)
            #expect((iceServers["expiresAt"] as? String)?.hasSuffix("Z") == true)
            let servers = try #require(iceServers["iceServers"] as? [JSONObject])
            #expect(servers.first?["urls"] as? [String] == ["stun:stun.cloudflare.com:3478", "stun:stun.l.google.com:19302"])

            let request = try await device.next("webrtc_request")
            #expect(request["session_id"] as? String == sessionID)
            #expect(request["user_id"] as? String == "alice")
            #expect(request["metadata"] as? [String: String] == ["camera": "front"])
            #expect(request["ice_servers"] as? JSONObject != nil)
            #expect(request["request_id"] == nil)
            #expect(request["seq"] as? Int == 1)

            // A client's own from/user_id/seq are never forwarded.
            try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 offer", "from": "mallory", "user_id": "root", "seq": 99])
            let offer = try await app.next("webrtc_offer")
            #expect(offer as NSDictionary == ["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 offer", "seq": 2] as NSDictionary)

            try app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0 answer"])
            let answer = try await device.next("webrtc_answer")
            #expect(answer as NSDictionary == ["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0 answer", "seq": 2] as NSDictionary)

            let candidate: JSONObject = [
                "candidate": "candidate:1 1 udp 2122260223 192.0.2.1 54400 typ host", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd",
                "extra": true,
            ]
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": candidate])
            let ice = try await device.next("webrtc_ice")
            #expect(
                ice["candidate"] as? NSDictionary == [
                    "candidate": candidate["candidate"]!, "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "abcd",
                ] as NSDictionary
            )

            try device.send([
                "type": "webrtc_ice", "session_id": sessionID,
                "candidates": [
                    ["candidate": "c1", "sdpMid": "0", "sdpMLineIndex": 0], ["candidate": "c2", "sdpMid": NSNull(), "sdpMLineIndex": NSNull()],
                ], "complete": true,
            ])
            let batch = try await app.next("webrtc_ice")
            #expect((batch["candidates"] as? [JSONObject])?.compactMap { $0["candidate"] as? String } == ["c1", "c2"])
            #expect(batch["complete"] as? Bool == true)

            try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": NSNull()])
            let end = try await app.next("webrtc_ice")
            #expect(end["candidate"] is NSNull)

            try app.send(["type": "webrtc_close", "session_id": sessionID, "reason": "user_hangup"])
            for socket in [app, device] {
                let close = try await socket.next("webrtc_close")
                #expect(close["session_id"] as? String == sessionID)
                #expect(close["reason"] as? String == "user_hangup")
                #expect(close["by"] as? String == "app")
            }
            // The session is gone for both.
            try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 late"])
            let error = try await device.next("error")
            #expect(error["code"] as? String == "unknown_session")
            #expect(error["session_id"] as? String == sessionID)
            try await app.expectNothingPending()
        }
    }

    @Test func deviceMayRejectASession() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            try device.send(["type": "webrtc_reject", "session_id": sessionID, "reason": "busy"])
            for socket in [app, device] {
                let close = try await socket.next("webrtc_close")
                #expect(close["reason"] as? String == "rejected")
                #expect(close["by"] as? String == "device")
                #expect(close["detail"] as? String == "busy")
            }
            // Apps hang up with webrtc_close; webrtc_reject is the device's.
            try app.send(["type": "webrtc_reject", "session_id": sessionID])
            #expect(try await app.next("error")["code"] as? String == "bad_request")
        }
    }

    @Test func aSessionsMessagesArriveInOrder() async throws {
        try await TestRelay.run(["RELAY_RATE_BURST": "1000"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            let count = 200
            for index in 0..<count {
                try app.send([
                    "type": "webrtc_ice", "session_id": sessionID,
                    "candidate": ["candidate": "candidate:\(index)", "sdpMid": "0", "sdpMLineIndex": 0],
                ])
            }
            var previousSeq = 1
            for index in 0..<count {
                let message = try await device.next("webrtc_ice")
                #expect((message["candidate"] as? JSONObject)?["candidate"] as? String == "candidate:\(index)")
                let seq = try #require(message["seq"] as? Int)
                #expect(seq == previousSeq + 1)
                previousSeq = seq
            }
        }
    }

    @Test func sessionIsRoutedOnlyBetweenItsParties() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let alice = try await relay.app("alice")
            let mallory = try await relay.app("mallory", devices: ["robot-1"])
            let (credentials, _) = try await relay.openSession(app: alice, device: device)
            let sessionID = credentials["session_id"] as! String
            // Another app that knows the id is treated as if the session did not exist.
            try mallory.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0 hijack", "request_id": "m1"])
            let error = try await mallory.next("error")
            #expect(error["code"] as? String == "unknown_session")
            #expect(error["request_id"] as? String == "m1")
            try mallory.send(["type": "webrtc_close", "session_id": sessionID])
            #expect(try await mallory.next("error")["code"] as? String == "unknown_session")
            try await device.expectNothingPending()
            try await alice.expectNothingPending()
        }
    }

    @Test func pingIsAnsweredWithPong() async throws {
        try await TestRelay.run { relay in
            let app = try await relay.app()
            try app.send(["type": "ping", "request_id": "p1"])
            let pong = try await app.next("pong")
            #expect(pong["request_id"] as? String == "p1")
            #expect(pong["seq"] as? Int == 1)
        }
    }

    @Test func healthzReportsLinksAndSessions() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            _ = try await relay.openSession(app: app, device: device)
            let body = try await relay.healthz()
            #expect(body.hasPrefix(#"{"status":"ok","version":""#) && body.hasSuffix(#","links":2,"sessions":1}"#))
        }
    }
}
