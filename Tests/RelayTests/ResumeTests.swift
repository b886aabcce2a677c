import Foundation
import Relay
import RelayTestSupport
import Testing

/// Contract §4: a link survives a dropped transport; nothing sent meanwhile is lost.
@Suite(.timeLimit(.minutes(1))) struct ResumeTests {
    /// The resume query a client adds to its usual credentials.
    static func resume(_ hello: JSONObject, lastSeq: Int) -> String {
        "resume_token=\(hello["resume_token"] as! String)&last_seq=\(lastSeq)"
    }

    /// The app sends these while the device is away; the device must get all, in order, once.
    static func sendNegotiation(from app: TestSocket, sessionID: String, count: Int) throws {
        for index in 0..<count {
            try app.send([
                "type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:\(index)", "sdpMid": "0", "sdpMLineIndex": 0],
            ])
        }
        try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "v=0 ice-restart"])
    }

    static func expectMissedMessages(on device: TestSocket, after lastSeq: Int, count: Int) async throws {
        for index in 0..<count {
            let ice = try await device.next("webrtc_ice")
            #expect((ice["candidate"] as? JSONObject)?["candidate"] as? String == "candidate:\(index)")
            #expect(ice["seq"] as? Int == lastSeq + 1 + index)
        }
        let offer = try await device.next("webrtc_offer")
        #expect(offer["sdp"] as? String == "v=0 ice-restart")
        #expect(offer["seq"] as? Int == lastSeq + 1 + count)
        // Nothing else, and no duplicate, follows.
        try await device.expectNothingPending()
    }

    @Test func deviceResumesAfterACleanCloseAndReceivesEveryMissedMessageInOrder() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, request) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            let lastSeq = request["seq"] as! Int
            device.close()
            _ = try await device.closeCode()
            #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")

            try Self.sendNegotiation(from: app, sessionID: sessionID, count: 12)
            try await app.expectNothingPending()

            let resumed = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&\(Self.resume(device.hello, lastSeq: lastSeq))"
            )
            #expect(resumed.hello["resumed"] as? Bool == true)
            #expect(resumed.hello["link_id"] as? String == device.hello["link_id"] as? String)
            try await Self.expectMissedMessages(on: resumed, after: lastSeq, count: 12)
            let connected = try await app.next("peer_status")
            #expect(connected["status"] as? String == "connected")
            #expect(connected["session_id"] as? String == sessionID)

            // The session goes on over the resumed link.
            try resumed.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0 answer"])
            #expect(try await app.next("webrtc_answer")["sdp"] as? String == "v=0 answer")
        }
    }

    @Test(arguments: [AbruptClient.Ending.reset, .fin])
    func deviceResumesAfterItsConnectionEndsWithoutACloseFrame(_ ending: AbruptClient.Ending) async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, request) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            let lastSeq = request["seq"] as! Int
            // The robot's network changes: a new transport takes the link over, then ends without
            // a close frame (a reset, or a FIN as from a client that aborts its socket).
            let dropped = ContinuousClock.now
            try await AbruptClient.connectThenDrop(
                port: relay.port,
                pathAndQuery: "/ws/device?\(relay.deviceQuery())&\(Self.resume(device.hello, lastSeq: lastSeq))",
                ending: ending
            )
            _ = try await device.closeCode()
            #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")
            // Noticed when the connection ended, not at the next missed heartbeat (20 s).
            #expect(ContinuousClock.now - dropped < .seconds(5))

            try Self.sendNegotiation(from: app, sessionID: sessionID, count: 8)
            try await app.expectNothingPending()
            let resumed = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&\(Self.resume(device.hello, lastSeq: lastSeq))"
            )
            #expect(resumed.hello["resumed"] as? Bool == true)
            try await Self.expectMissedMessages(on: resumed, after: lastSeq, count: 8)
            #expect(try await app.next("peer_status")["status"] as? String == "connected")
        }
    }

    @Test func appResumesAndReceivesWhatTheDeviceSentMeanwhile() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            app.close()
            _ = try await app.closeCode()
            #expect(try await device.next("peer_status")["status"] as? String == "reconnecting")
            try Self.sendNegotiation(from: device, sessionID: sessionID, count: 5)
            try await device.expectNothingPending()

            let resumed = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken())&\(Self.resume(app.hello, lastSeq: credentials["seq"] as! Int))"
            )
            #expect(resumed.hello["resumed"] as? Bool == true)
            try await Self.expectMissedMessages(on: resumed, after: credentials["seq"] as! Int, count: 5)
            #expect(try await device.next("peer_status")["status"] as? String == "connected")
        }
    }

    @Test func resumeWithAWrongTokenGivesAFreshLink() async throws {
        try await TestRelay.run { relay in
            let app = try await relay.app()
            app.close()
            _ = try await app.closeCode()
            let wrong = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken())&resume_token=AAAA&last_seq=0")
            #expect(wrong.hello["resumed"] as? Bool == false)
            #expect(wrong.hello["link_id"] as? String != app.hello["link_id"] as? String)
            // Another user cannot take the link over even with its token.
            let other = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken("mallory"))&\(Self.resume(app.hello, lastSeq: 0))"
            )
            #expect(other.hello["resumed"] as? Bool == false)
        }
    }

    @Test func resumeBeyondTheKeptWindowGivesAFreshLinkAndEndsTheOldOne() async throws {
        try await TestRelay.run(["RELAY_RESUME_BUFFER_MESSAGES": "4", "RELAY_RATE_BURST": "1000"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, request) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            device.close()
            _ = try await device.closeCode()
            _ = try await app.next("peer_status")
            // More than the four kept messages: the oldest are dropped.
            try Self.sendNegotiation(from: app, sessionID: sessionID, count: 10)
            try await app.expectNothingPending()
            let fresh = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&\(Self.resume(device.hello, lastSeq: request["seq"] as! Int))"
            )
            #expect(fresh.hello["resumed"] as? Bool == false)
            #expect(fresh.hello["link_id"] as? String != device.hello["link_id"] as? String)
            // The call could not be kept whole: it ends rather than going on with a gap.
            let close = try await app.next("webrtc_close")
            #expect(close["reason"] as? String == "peer_disconnected")
            // A last_seq from the future cannot be resumed either.
            let future = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&\(Self.resume(fresh.hello, lastSeq: 999))"
            )
            #expect(future.hello["resumed"] as? Bool == false)
        }
    }

    @Test func resumeAfterTheGraceGivesAFreshLink() async throws {
        try await TestRelay.run(["RELAY_RESUME_GRACE_S": "1"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            _ = try await relay.openSession(app: app, device: device)
            device.close()
            _ = try await device.closeCode()
            _ = try await app.next("peer_status")
            #expect(try await app.next("webrtc_close")["reason"] as? String == "peer_disconnected")
            let late = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&\(Self.resume(device.hello, lastSeq: 1))"
            )
            #expect(late.hello["resumed"] as? Bool == false)
        }
    }

    @Test func ackedMessagesAreNotKeptAndLastSeqActsAsAnAck() async throws {
        try await TestRelay.run(["RELAY_RESUME_BUFFER_MESSAGES": "3"]) { relay in
            let app = try await relay.app()
            // Three pongs fill the kept window; acking them makes room without dropping anything.
            for _ in 0..<3 { try await app.expectNothingPending() }
            try app.send(["type": "ack", "seq": 3])
            for _ in 0..<2 { try await app.expectNothingPending() }
            app.close()
            _ = try await app.closeCode()
            let resumed = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken())&\(Self.resume(app.hello, lastSeq: 3))"
            )
            #expect(resumed.hello["resumed"] as? Bool == true)
            // seq 4 and 5 were received already but not acked: replayed.
            #expect(try await resumed.next("pong")["seq"] as? Int == 4)
            #expect(try await resumed.next("pong")["seq"] as? Int == 5)
            try resumed.send(["type": "ping"])
            #expect(try await resumed.next("pong")["seq"] as? Int == 6)
        }
    }
}
