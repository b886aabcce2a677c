import DeviceAuth
import Foundation
import HTTPTypes
import OpenSSLCrypto
import Registry
import Relay
import RelayTestSupport
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

    @Test func aValidlySignedTokenWithAFarFutureExpiryIsRefusedAndTheRelayKeepsServing() async throws {
        try await TestRelay.run { relay in
            for exp in [1e300, 1.8e18] {
                // Signed with the relay's own secret: only the time is wrong.
                let header = Base64URL.encode(Array(#"{"alg":"HS256","typ":"JWT"}"#.utf8))
                let claims = Base64URL.encode(Array(#"{"sub":"alice","devices":["robot-1"],"exp":\#(exp)}"#.utf8))
                let mac = LibCrypto.hmacSHA256(key: Array(TestRelay.jwtSecret.utf8), message: Array("\(header).\(claims)".utf8))
                let result = try await relay.upgrade("/ws/app?token=\(header).\(claims).\(Base64URL.encode(mac))")
                #expect(result.status == .unauthorized)
                #expect(result.detail == "App token claims are invalid: exp must be a time in seconds since 1970, at most 253402300799")
            }
            // Still serving.
            let app = try await relay.app()
            try await app.expectNothingPending()
        }
    }

    @Test func deviceRefusalsAre401Or403WithDetail() async throws {
        try await TestRelay.run { relay in
            let gone = try await relay.store.addDevice("robot-gone", owners: []).secret
            try await relay.store.revoke("robot-gone")
            var result = try await relay.upgrade("/ws/device?device_id=robot-1&sig=\(String(repeating: "a", count: 64))")
            #expect(result.status == .unauthorized)
            #expect(result.detail?.hasPrefix("Missing ts and nonce") == true)

            result = try await relay.upgrade("/ws/device?\(relay.deviceQuery(secret: "wrong-secret"))")
            #expect(result.status == .unauthorized)
            #expect(result.detail == "Device signature is invalid")

            result = try await relay.upgrade("/ws/device?\(relay.deviceQuery(timestamp: Int(Date().timeIntervalSince1970) - 400))")
            #expect(result.status == .unauthorized)
            #expect(result.detail?.hasPrefix("ts is more than 300 s from the relay's clock") == true)

            result = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-gone", secret: gone))")
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

/// Operators read logs; credentials must never be in them, whether a client is admitted or refused.
@Suite(.timeLimit(.minutes(1))) struct LogSecrecyTests {
    @Test func tokensSignaturesAndNoncesNeverReachTheLog() async throws {
        let logs = LogCapture()
        try await TestRelay.run(["RELAY_ADMIN_TOKEN": AuditTests.adminToken], logs: logs) { relay in
            let token = relay.appToken()
            let expired = relay.appToken(lifetime: -120)
            let nonce = "nonce-for-log-test-0001"
            let query = relay.deviceQuery(nonce: nonce)
            let signature = String(query.split(separator: "sig=").last!)
            let badQuery = relay.deviceQuery(secret: "wrong-secret", nonce: "nonce-for-log-test-0002")
            let badSignature = String(badQuery.split(separator: "sig=").last!)
            let added = try await relay.request(
                .post,
                "/admin/devices",
                token: AuditTests.adminToken,
                body: #"{"device_id":"robot-7","owners":["alice"]}"#
            )
            let deviceSecret = try #require(added.json["secret"] as? String)
            let registered = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: deviceSecret))"
            )
            let secrets = [token, expired, nonce, signature, "nonce-for-log-test-0002", badSignature, deviceSecret, AuditTests.adminToken]

            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(query)")
            let app = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/app?token=\(token)")
            _ = try await relay.openSession(app: app, device: device)
            // One line per session lifecycle event, naming the session and both links.
            let (credentials, _) = try await relay.openSession(app: app, device: registered, deviceID: "robot-7")
            let sessionID = try #require(credentials["session_id"] as? String)
            try app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "v=0"])
            _ = try await registered.next("webrtc_answer")
            try app.send(["type": "webrtc_close", "session_id": sessionID])
            _ = try await registered.next("webrtc_close")
            _ = try await app.next("webrtc_close")
            for event in ["Session opened", "Session answered", "Session closed"] {
                let matching = logs.all.filter { $0.contains(event) && $0.contains("session.id=\(sessionID)") }
                #expect(matching.count == 1, "\(event)")
                #expect(matching.first?.contains("app.link.id=") == true && matching.first?.contains("device.link.id=") == true)
            }
            _ = try await relay.upgrade("/ws/app?token=\(expired)")
            _ = try await relay.upgrade("/ws/device?\(badQuery)")
            _ = try await relay.upgrade("/ws/device?\(query)")
            try app.send(["type": "auth", "token": expired])
            _ = try await app.next("error")
            app.close()
            device.close()
            _ = try await app.closeCode()
            _ = try await device.closeCode()

            let lines = logs.all
            #expect(lines.contains { $0.contains("App refused") })
            #expect(lines.contains { $0.contains("Device refused") })
            #expect(lines.contains { $0.contains("Session opened") })
            for line in lines {
                for secret in secrets {
                    #expect(!line.contains(secret), "a credential reached the log: \(line)")
                }
                // No signature-sized hex or JWT-shaped text at all.
                #expect(line.range(of: "[0-9a-f]{64}", options: .regularExpression) == nil, "\(line)")
                #expect(line.range(of: "eyJ[A-Za-z0-9_-]+\\.", options: .regularExpression) == nil, "\(line)")
            }
        }
    }
}
