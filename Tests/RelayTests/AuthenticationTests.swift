import DeviceAuth
import Foundation
import HTTPTypes
import Relay
import Testing

/// Refusals happen before the upgrade, with a status and a `detail` a developer can act on.
@Suite(.timeLimit(.minutes(1))) struct AuthenticationTests {
    @Test func appConnectsWithHeaderOrQueryToken() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.app()
            let viaQuery = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/app?token=\(relay.appToken())")
            #expect(viaQuery.hello["type"] as? String == "hello")
        }
    }

    @Test func appRefusalsAre401WithDetail() async throws {
        try await TestRelay.run { relay in
            var result = try await relay.upgrade("/ws/app")
            #expect(result.status == .unauthorized)
            #expect(result.detail == AuthFailure.missingToken.detail)

            result = try await relay.upgrade("/ws/app", headers: [.authorization: "Bearer \(relay.appToken(lifetime: -60))"])
            #expect(result.status == .unauthorized)
            #expect(result.detail == "App token has expired")

            result = try await relay.upgrade("/ws/app?token=\(relay.appToken(secret: "not-the-relay-secret-not-the-relay"))")
            #expect(result.status == .unauthorized)
            #expect(result.detail == "App token signature is invalid")

            result = try await relay.upgrade("/ws/app?token=abc.def")
            #expect(result.status == .unauthorized)
        }
    }

    @Test func deviceRefusalsAre401Or403WithDetail() async throws {
        let registry = InMemoryDeviceRegistry([DeviceRecord(deviceID: "robot-gone", secrets: ["gone-secret"], revoked: true)])
        try await TestRelay.run(devices: registry) { relay in
            var result = try await relay.upgrade("/ws/device?device_id=robot-1&sig=\(String(repeating: "a", count: 64))")
            #expect(result.status == .unauthorized)
            #expect(result.detail?.hasPrefix("Missing ts and nonce") == true)

            result = try await relay.upgrade("/ws/device?\(relay.deviceQuery(secret: "wrong-secret"))")
            #expect(result.status == .unauthorized)
            #expect(result.detail == "Device signature is invalid")

            result = try await relay.upgrade("/ws/device?\(relay.deviceQuery(timestamp: Int(Date().timeIntervalSince1970) - 400))")
            #expect(result.status == .unauthorized)
            #expect(result.detail?.hasPrefix("ts is more than 300 s from the relay's clock") == true)

            result = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-gone", secret: "gone-secret"))")
            #expect(result.status == .forbidden)
            #expect(result.detail == "Device is revoked")

            // A captured URL works once.
            let query = relay.deviceQuery()
            let first = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(query)")
            #expect(first.hello["type"] as? String == "hello")
            result = try await relay.upgrade("/ws/device?\(query)")
            #expect(result.status == .unauthorized)
            #expect(result.detail == AuthFailure.replayedNonce.detail)
        }
    }

    @Test func webSocketClientSeesTheRefusalAsAFailedUpgrade() async throws {
        try await TestRelay.run { relay in
            await #expect(throws: (any Error).self) {
                _ = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/app?token=nope")
            }
        }
    }

    @Test func plainGetOnASocketPathAsksForAnUpgrade() async throws {
        try await TestRelay.run { relay in
            let (status, body) = try await relay.get("/ws/app?token=\(relay.appToken())")
            #expect(status == .upgradeRequired)
            #expect(body == #"{"detail":"Connect with a WebSocket upgrade"}"#)
        }
    }
}
