import Foundation
import Relay
import RelayTestSupport
import Testing

/// What the other party sees when a link ends or is replaced.
@Suite(.timeLimit(.minutes(1))) struct LinkLifecycleTests {
    @Test func deviceThatDoesNotComeBackEndsItsSessionsAfterTheGrace() async throws {
        try await TestRelay.run(["RELAY_RESUME_GRACE_S": "2"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as? String
            device.close()
            #expect(try await device.closeCode() == 1000)
            let reconnecting = try await app.next("peer_status")
            #expect(reconnecting["session_id"] as? String == sessionID)
            #expect(reconnecting["status"] as? String == "reconnecting")
            // While it is away it is not online for new sessions.
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            #expect(try await app.next("error")["code"] as? String == "device_offline")
            let close = try await app.next("webrtc_close")
            #expect(close["session_id"] as? String == sessionID)
            #expect(close["reason"] as? String == "peer_disconnected")
            #expect(close["by"] as? String == "relay")
        }
    }

    @Test func withoutAGraceADisconnectEndsSessionsAtOnce() async throws {
        try await TestRelay.run(["RELAY_RESUME_GRACE_S": "0"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            _ = try await relay.openSession(app: app, device: device)
            _ = try await relay.openSession(app: app, device: device)
            app.close()
            for _ in 0..<2 {
                #expect(try await device.next("webrtc_close")["reason"] as? String == "peer_disconnected")
            }
            let body = try await relay.healthz()
            #expect(body.hasSuffix(#","links":1,"sessions":0}"#))
        }
    }

    @Test func deviceConnectingAgainReplacesItsOldLinkWith4002() async throws {
        try await TestRelay.run { relay in
            let old = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: old)
            let replacement = try await relay.device()
            #expect(try await old.closeCode() == 4002)
            let close = try await app.next("webrtc_close")
            #expect(close["session_id"] as? String == credentials["session_id"] as? String)
            #expect(close["reason"] as? String == "peer_disconnected")
            // The new link is the one sessions go to.
            let (fresh, request) = try await relay.openSession(app: app, device: replacement)
            #expect(request["session_id"] as? String == fresh["session_id"] as? String)
        }
    }
}
