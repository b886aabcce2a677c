import DeviceAuth
import Foundation
import Registry
import Relay
import RelayTestSupport
import Testing

/// Bad input gets a clear error on the link, loses nothing, and leaves the socket open.
@Suite(.timeLimit(.minutes(1))) struct SignalingErrorTests {
    func expectError(
        _ socket: TestSocket,
        _ code: String,
        message: String? = nil,
        sourceLocation: SourceLocation = #_sourceLocation
    ) async throws -> JSONObject {
        let error = try await socket.next("error")
        #expect(error["code"] as? String == code, "\(error)", sourceLocation: sourceLocation)
        if let message { #expect(error["message"] as? String == message, sourceLocation: sourceLocation) }
        #expect(error["seq"] is Int, sourceLocation: sourceLocation)
        return error
    }

    @Test func malformedMessagesGetBadRequestAndTheSocketStaysOpen() async throws {
        try await TestRelay.run(["RELAY_MAX_MESSAGE_BYTES": "262144"]) { relay in
            let app = try await relay.app()
            app.send(raw: .text("this is not json"))
            _ = try await expectError(app, "bad_request", message: "Message must be a JSON object")
            app.send(raw: .text("[1,2,3]"))
            _ = try await expectError(app, "bad_request", message: "Message must be a JSON object")
            try app.send(["device_id": "robot-1"])
            _ = try await expectError(app, "bad_request", message: "type is required")
            try app.send(["type": 7])
            _ = try await expectError(app, "bad_request", message: "type must be a string")
            try app.send(["type": "teleport", "request_id": "t1"])
            let unknown = try await expectError(app, "bad_request", message: "Unknown message type 'teleport'")
            #expect(unknown["request_id"] as? String == "t1")
            try app.send(["type": "webrtc_offer", "session_id": "s"])
            _ = try await expectError(app, "bad_request", message: "sdp is required")
            try app.send(["type": "webrtc_offer", "sdp": "v=0"])
            _ = try await expectError(app, "bad_request", message: "session_id is required")
            try app.send(["type": "webrtc_request"])
            _ = try await expectError(app, "bad_request", message: "device_id is required")
            try app.send(["type": "ping", "request_id": String(repeating: "r", count: 65)])
            _ = try await expectError(app, "bad_request")
            app.send(raw: .binary([1, 2, 3]))
            _ = try await expectError(app, "bad_request", message: "Messages must be JSON in text frames")
            try await app.expectNothingPending()
        }
    }

    /// The relay's own JSON parser and writer: what a client escapes arrives as it meant it,
    /// and what JSON does not allow is refused.
    @Test func escapedTextArrivesIntactAndInvalidJSONIsRefused() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            // Quotes, backslashes, CRLF, a tab, a control character, an escaped slash, é written
            // as is and as \u00e9, and an emoji as a surrogate pair.
            let raw = #"{"type":"webrtc_offer","session_id":"\#(sessionID)","sdp":"v=0\r\na=\"x\"\\y\tz\u0001\/é\u00e9\ud83d\ude00"}"#
            app.send(raw: .text(raw))
            let offer = try await device.next("webrtc_offer")
            #expect(offer["sdp"] as? String == "v=0\r\na=\"x\"\\y\tz\u{01}/éé😀")

            let refused = [
                #"{"type":"ping"} trailing"#,
                #"{"type":"ping",}"#,
                #"{"type":"ping","request_id":"\ud83d"}"#,
                "{\"type\":\"ping\",\"request_id\":\"a\u{01}b\"}",
                #"{"type":"ping","n":01}"#,
                #"{"type":"ping","n":1.}"#,
                #"{"type":"device_info","capabilities":"# + String(repeating: "[", count: 40) + String(repeating: "]", count: 40) + "}",
            ]
            for text in refused {
                app.send(raw: .text(text))
                _ = try await expectError(app, "bad_request", message: "Message must be a JSON object")
            }
            // Numbers, nesting within the limit and white space are fine.
            app.send(raw: .text(" {\n\"type\" : \"ping\", \"n\": [-0.5e3, 1E2, {\"a\": [[]]}], \"request_id\": \"p1\"}\t"))
            #expect(try await app.next("pong")["request_id"] as? String == "p1")
            try await app.expectNothingPending()
            try await device.expectNothingPending()
        }
    }

    @Test func fieldLimitsAreEnforced() async throws {
        try await TestRelay.run(["RELAY_MAX_MESSAGE_BYTES": "262144"]) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            let (credentials, _) = try await relay.openSession(app: app, device: device)
            let sessionID = credentials["session_id"] as! String
            func ice(_ candidate: JSONObject) -> JSONObject { ["type": "webrtc_ice", "session_id": sessionID, "candidate": candidate] }

            try app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": String(repeating: "a", count: 64 * 1024 + 1)])
            _ = try await expectError(app, "bad_request", message: "sdp is longer than 65536 bytes")
            try app.send(ice(["candidate": String(repeating: "c", count: 1025)]))
            _ = try await expectError(app, "bad_request")
            try app.send(ice(["candidate": "c", "sdpMid": String(repeating: "m", count: 65)]))
            _ = try await expectError(app, "bad_request")
            try app.send(ice(["candidate": "c", "sdpMLineIndex": 256]))
            _ = try await expectError(app, "bad_request", message: "sdpMLineIndex must be an integer from 0 to 255")
            try app.send(ice(["candidate": "c", "sdpMLineIndex": 1.5]))
            _ = try await expectError(app, "bad_request")
            try app.send(["type": "webrtc_ice", "session_id": sessionID])
            _ = try await expectError(app, "bad_request", message: "webrtc_ice needs candidate, candidates or complete")
            try app.send(["type": "webrtc_request", "device_id": "robot-1", "metadata": ["blob": String(repeating: "x", count: 4096)]])
            _ = try await expectError(app, "bad_request", message: "metadata is larger than 4096 bytes")
            try app.send(["type": "webrtc_request", "device_id": "robot-1", "metadata": "not an object"])
            _ = try await expectError(app, "bad_request", message: "metadata must be an object")
            try app.send(["type": "webrtc_request", "device_id": "robot-1", "ttl": 10])
            _ = try await expectError(app, "bad_request", message: "ttl must be an integer from 60 to 172800")
            // None of it reached the device, and the session still works.
            try await device.expectNothingPending()
            try app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": String(repeating: "a", count: 64 * 1024)])
            #expect((try await device.next("webrtc_answer")["sdp"] as? String)?.count == 64 * 1024)
        }
    }

    @Test func sessionRequestChecksRunInTheContractsOrder() async throws {
        try await TestRelay.run(["RELAY_MAX_SESSIONS_PER_DEVICE": "1"]) { relay in
            let owned = try await relay.store.addDevice("robot-owned", owners: ["alice"]).secret
            let app = try await relay.app("alice", devices: ["robot-1"])
            // 1. well formed
            try app.send(["type": "webrtc_request", "device_id": "robot 1!", "request_id": "a"])
            let malformed = try await expectError(app, "bad_request")
            #expect(malformed["request_id"] as? String == "a")
            // 2. authorized (before online: a stranger cannot probe which devices are online)
            try app.send(["type": "webrtc_request", "device_id": "robot-2", "request_id": "b"])
            let unauthorized = try await expectError(app, "unauthorized", message: "Not authorized")
            #expect(unauthorized["request_id"] as? String == "b")
            // 3. online
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            _ = try await expectError(app, "device_offline", message: "Device offline")
            // Registry owners may reach a device their token does not list.
            try app.send(["type": "webrtc_request", "device_id": "robot-owned"])
            _ = try await expectError(app, "device_offline", message: "Device offline")
            let ownedDevice = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-owned", secret: owned))"
            )
            _ = try await relay.openSession(app: app, device: ownedDevice, deviceID: "robot-owned")
            // 4. not busy
            let device = try await relay.device()
            _ = try await relay.openSession(app: app, device: device)
            let other = try await relay.app("bob", devices: ["robot-1"])
            try other.send(["type": "webrtc_request", "device_id": "robot-1"])
            _ = try await expectError(other, "device_busy")
        }
    }

    @Test func failingTURNServiceGivesTurnErrorAndNoSession() async throws {
        try await TestRelay.run(turn: UnreachableTURNService()) { relay in
            let device = try await relay.device()
            let app = try await relay.app()
            try app.send(["type": "webrtc_request", "device_id": "robot-1", "request_id": "t"])
            let error = try await expectError(app, "turn_error", message: "TURN error: upstream unreachable")
            #expect(error["request_id"] as? String == "t")
            try await device.expectNothingPending()
            let body = try await relay.healthz()
            #expect(body.contains(#""sessions":0"#))
        }
    }

    @Test func appLinkSessionLimitIsEnforced() async throws {
        try await TestRelay.run(["RELAY_MAX_SESSIONS_PER_APP": "1"]) { relay in
            let one = try await relay.device("robot-1")
            _ = try await relay.device("robot-2")
            let app = try await relay.app(devices: ["robot-1", "robot-2"])
            _ = try await relay.openSession(app: app, device: one)
            try app.send(["type": "webrtc_request", "device_id": "robot-2"])
            _ = try await expectError(app, "rate_limited", message: "Too many sessions on this connection (at most 1)")
        }
    }

    @Test func devicesCannotRequestSessionsAndAppsCannotDescribeThemselves() async throws {
        try await TestRelay.run { relay in
            let device = try await relay.device()
            try device.send(["type": "webrtc_request", "device_id": "robot-1"])
            _ = try await expectError(device, "bad_request", message: "webrtc_request is for apps")
            let app = try await relay.app()
            try app.send(["type": "device_info", "capabilities": ["video": true]])
            _ = try await expectError(app, "bad_request", message: "device_info is for devices")
            try device.send(["type": "device_info", "capabilities": ["video": true]])
            try await device.expectNothingPending()
        }
    }

    @Test func messageOverTheSizeLimitClosesWith1009() async throws {
        try await TestRelay.run { relay in
            let app = try await relay.app()
            app.send(raw: .text(String(repeating: " ", count: 64 * 1024 + 1)))
            #expect(try await app.closeCode() == 1009)
            // Also when the message comes in fragments.
            let fragmented = try await relay.app()
            fragmented.send(
                raw: .fragmented("{\"type\":\"ping\",\"pad\":\"" + String(repeating: "x", count: 70 * 1024) + "\"}", frameSize: 16 * 1024)
            )
            #expect(try await fragmented.closeCode() == 1009)
        }
    }

    @Test func anUnmaskedFrameFromAClientClosesWith1002() async throws {
        try await TestRelay.run { relay in
            let query = relay.deviceQuery()
            let client = try RawConnection.open(port: relay.port)
            try client.send(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(query)"))
            try client.send(RawFrame.make(RawFrame.text, Array(#"{"type":"ping"}"#.utf8), masked: false))
            let (bytes, _) = try await client.readUntilEnd(within: .seconds(10))
            #expect(RawFrame.closeCode(RawFrame.parse(bytes)) == 1002)
        }
    }

    @Test func appTokenRefreshMustKeepTheUser() async throws {
        try await TestRelay.run { relay in
            let app = try await relay.app("alice")
            try app.send(["type": "auth", "token": relay.appToken("bob")])
            _ = try await expectError(app, "unauthorized", message: "The new token is for another user")
            try app.send(["type": "auth", "token": "garbage"])
            _ = try await expectError(app, "unauthorized")
            try app.send(["type": "auth", "token": relay.appToken("alice", devices: ["robot-1"])])
            try await app.expectNothingPending()
        }
    }
}
