import Foundation
import HTTPTypes
import Relay
import RelayTestSupport
import Testing

/// Contract §5: limits keep one client from hurting the relay or anyone else.
@Suite(.timeLimit(.minutes(1))) struct AbuseTests {
    @Test func floodingLinkGetsRateLimitedThenClosedWith1008() async throws {
        try await TestRelay.run(["RELAY_RATE_BURST": "5", "RELAY_RATE_PER_S": "1"]) { relay in
            let app = try await relay.app()
            for _ in 0..<5 { try app.send(["type": "ping"]) }
            try app.send(["type": "ping", "request_id": "over"])
            for _ in 0..<5 { _ = try await app.next("pong") }
            let limited = try await app.next("error")
            #expect(limited["code"] as? String == "rate_limited")
            // Keep flooding: after 100 drops in a row the link is closed for policy.
            for _ in 0..<120 { try app.send(["type": "ping"]) }
            #expect(try await app.closeCode() == 1008)
        }
    }

    @Test func readerThatNeverReadsIsDroppedAndTheFloodingSideIsUnaffected() async throws {
        try await TestRelay.run(["RELAY_RATE_BURST": "100000", "RELAY_RATE_PER_S": "100000", "RELAY_RESUME_BUFFER_BYTES": "262144"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            // The device stops reading: its kernel buffers fill, then the relay's bound is hit.
            device.stopReading()
            let sdp = String(repeating: "a", count: 60_000)
            var sent = 0
            var reconnecting = false
            while !reconnecting, sent < 2000 {
                try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": sdp])
                sent += 1
                if sent % 20 == 0 {
                    // The flooding side still gets prompt answers of its own.
                    try app.send(["type": "ping"])
                    while true {
                        let message = try await app.next()
                        if message["type"] as? String == "pong" { break }
                        if message["type"] as? String == "peer_status" {
                            reconnecting = message["status"] as? String == "reconnecting"
                        }
                    }
                }
            }
            // The relay dropped the slow reader's transport (its link detached) well before the
            // flood ended: at most ~1 MiB queued plus socket buffers, not 120 MB.
            #expect(reconnecting)
            #expect(sent < 2000)
        }
    }

    @Test func connectionsPerUserAndPerDeviceAreLimited() async throws {
        try await TestRelay.run(["RELAY_CONNECT_BURST": "3", "RELAY_CONNECT_RATE_PER_MIN": "1"]) { relay in
            for _ in 0..<3 { _ = try await relay.app() }
            let refused = try await relay.upgrade("/ws/app?token=\(relay.appToken())")
            #expect(refused.status == .tooManyRequests)
            #expect(refused.detail?.hasPrefix("Too many connections for this user; retry in") == true)
            for _ in 0..<3 { _ = try await relay.device() }
            let device = try await relay.upgrade("/ws/device?\(relay.deviceQuery())")
            #expect(device.status == .tooManyRequests)
            #expect(device.detail?.hasPrefix("Too many connections for this device; retry in") == true)
        }
    }

    @Test func unansweredSessionClosesWithSetupTimeout() async throws {
        try await TestRelay.run(["RELAY_SETUP_TIMEOUT_S": "2"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let answered = try await relay.openSession(app: app, device: device).credentials["session_id"] as! String
            try app.send(["type": "webrtc_answer", "session_id": answered, "sdp": "v=0"])
            _ = try await device.next("webrtc_answer")
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            for socket in [app, device] {
                let close = try await socket.next("webrtc_close")
                #expect(close["session_id"] as? String == credentials["session_id"] as? String)
                #expect(close["reason"] as? String == "setup_timeout")
                #expect(close["by"] as? String == "relay")
            }
            // The answered one lives on.
            try app.send(["type": "webrtc_ice", "session_id": answered, "complete": true])
            #expect(try await device.next("webrtc_ice")["session_id"] as? String == answered)
        }
    }
}

/// Contract §1.1: an app's socket lives as long as its token, and `auth` extends it.
@Suite(.timeLimit(.minutes(1))) struct TokenExpiryTests {
    @Test func socketClosesWith4001AtExpiryPlusLeewayWithoutAFreshToken() async throws {
        // A leeway of a few seconds: a loaded machine may take one to connect.
        try await TestRelay.run(["RELAY_JWT_LEEWAY_S": "3"]) { relay in
            // Expired already, but within the leeway at connect time.
            let app = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken(lifetime: 0.5))")
            #expect(try await app.closeCode() == 4001)
        }
    }

    @Test func freshTokenOverTheSocketKeepsItOpen() async throws {
        try await TestRelay.run(["RELAY_JWT_LEEWAY_S": "1"]) { relay in
            // Lifetimes of a few seconds: a loaded machine may take one to connect.
            let app = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken(lifetime: 3))")
            try app.send(["type": "auth", "token": relay.appToken(lifetime: 600)])
            try await app.expectNothingPending()
            // Past the first token's expiry + leeway (a token made after it, as short, has ended) the link is still there.
            let short = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken("other", lifetime: 3))")
            #expect(try await short.closeCode() == 4001)
            try await app.expectNothingPending()
        }
    }
}

/// Contract §4: dead sockets are found by heartbeats, and their links detach.
@Suite(.timeLimit(.minutes(1))) struct HeartbeatTests {
    @Test func socketThatStopsAnsweringPingsIsDroppedAndItsLinkDetached() async throws {
        try await TestRelay.run(["RELAY_HEARTBEAT_S": "1"]) { relay in
            let app = try await relay.app()
            #expect(app.hello["heartbeat_ms"] as? Int == 1000)
            async let silentFor = AbruptClient.connectAndStaySilent(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())")
            // The silent device is online until the heartbeat finds it dead.
            var opened = false
            while !opened {
                try app.send(["type": "webrtc_request", "device_id": "robot-1"])
                opened = try await app.next()["type"] as? String == "webrtc_credentials"
            }
            #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")
            let elapsed = try await silentFor
            // Pinged every second: dropped after the second missed pong (contract §4), about three
            // intervals after it connected; one missed pong (two intervals) is not enough.
            #expect(elapsed >= .milliseconds(2500) && elapsed < .seconds(6), "\(elapsed)")
        }
    }
}
