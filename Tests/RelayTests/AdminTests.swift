import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import Testing

/// Contract §1.4 and §9: the admin API.
@Suite(.timeLimit(.minutes(1))) struct AdminTests {
    static let token = AuditTests.adminToken

    @Test func adminRoutesAnswer404WithoutAnAdminToken() async throws {
        try await TestRelay.run { relay in
            let devices = try await relay.request(.get, "/admin/devices", token: Self.token)
            #expect(devices.status == .notFound)
            let sessions = try await relay.request(.get, "/admin/sessions")
            #expect(sessions.status == .notFound)
        }
    }

    @Test func adminRoutesRefuseAMissingOrWrongToken() async throws {
        try await TestRelay.run(["RELAY_ADMIN_TOKEN": Self.token]) { relay in
            for token in [nil, "wrong-token", relay.appToken()] {
                for (method, path) in [
                    (.get, "/admin/devices"), (.post, "/admin/devices"), (.delete, "/admin/devices/robot-1"), (.get, "/admin/sessions"),
                ]
                    as [(HTTPRequest.Method, String)]
                {
                    let answer = try await relay.request(method, path, token: token, body: method == .post ? "{\"device_id\":\"robot-9\"}" : nil)
                    #expect(answer.status == .unauthorized, "\(method) \(path)")
                    #expect(answer.json["detail"] as? String == "Admin routes need 'Authorization: Bearer <RELAY_ADMIN_TOKEN>'")
                }
            }
            #expect(try await relay.store.devices().isEmpty)
        }
    }

    @Test func operatorsAddListAndRevokeDevicesAndEndSessions() async throws {
        try await TestRelay.run(["RELAY_ADMIN_TOKEN": Self.token]) { relay in
            let added = try await relay.request(
                .post,
                "/admin/devices",
                token: Self.token,
                body: #"{"device_id":"robot-7","owners":["alice"],"label":"Lab arm"}"#
            )
            #expect(added.status == .created)
            let secret = try #require(added.json["secret"] as? String)
            #expect((added.json["device"] as? [String: Any])?["owners"] as? [String] == ["alice"])
            #expect(try await relay.request(.post, "/admin/devices", token: Self.token, body: #"{"device_id":"robot-7"}"#).status == .conflict)
            let malformed = try await relay.request(.post, "/admin/devices", token: Self.token, body: #"{"device_id":"robot 7"}"#)
            #expect(malformed.status == .badRequest)
            #expect((malformed.json["detail"] as? String)?.contains("is not a valid device id") == true)
            #expect(try await relay.request(.post, "/admin/devices", token: Self.token, body: "[]").status == .badRequest)
            #expect(
                try await relay.request(.post, "/admin/devices", token: Self.token, body: #"{"device_id":"r","owners":"alice"}"#).status
                    == .badRequest
            )

            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            let app = try await relay.app("alice", devices: nil)
            let (credentials, _) = try await relay.openSession(app: app, device: device, deviceID: "robot-7")
            let sessionID = try #require(credentials["session_id"] as? String)

            let devices = try #require(try await relay.request(.get, "/admin/devices", token: Self.token).json["devices"] as? [[String: Any]])
            #expect(devices.count == 1)
            #expect(devices.first?["online"] as? Bool == true)
            #expect(devices.first?["sessions"] as? Int == 1)
            #expect(devices.first?["secrets"] as? Int == 1)
            #expect(devices.first?["secret"] == nil)
            #expect(try await relay.request(.get, "/admin/devices/robot-7", token: Self.token).status == .ok)
            #expect(try await relay.request(.get, "/admin/devices/robot-9", token: Self.token).status == .notFound)

            let sessions = try #require(try await relay.request(.get, "/admin/sessions", token: Self.token).json["sessions"] as? [[String: Any]])
            #expect(sessions.count == 1)
            #expect(sessions.first?["session_id"] as? String == sessionID)
            #expect(sessions.first?["user_id"] as? String == "alice")
            #expect(sessions.first?["device_id"] as? String == "robot-7")
            #expect(sessions.first?["answered"] as? Bool == false)
            #expect(sessions.first?["phase"] as? String == "open")
            #expect(try await relay.request(.get, "/admin/sessions/\(sessionID)", token: Self.token).status == .ok)

            #expect(try await relay.request(.delete, "/admin/sessions/\(sessionID)", token: Self.token).status == .ok)
            for party in [app, device] {
                let closed = try await party.next("webrtc_close")
                #expect(closed["reason"] as? String == "admin")
                #expect(closed["by"] as? String == "relay")
            }
            #expect(try await relay.request(.delete, "/admin/sessions/\(sessionID)", token: Self.token).status == .notFound)

            _ = try await relay.openSession(app: app, device: device, deviceID: "robot-7")
            let revoked = try await relay.request(.delete, "/admin/devices/robot-7", token: Self.token)
            #expect(revoked.status == .ok)
            #expect((revoked.json["device"] as? [String: Any])?["revoked"] as? Bool == true)
            #expect(try await app.next("webrtc_close")["reason"] as? String == "device_revoked")
            #expect(try await device.closeCode() == 1008)
            #expect(try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-7", secret: secret))").status == .forbidden)
            #expect(try await relay.request(.delete, "/admin/devices/robot-9", token: Self.token).status == .notFound)
        }
    }

    @Test func operatorsGrantUngrantRotateUnrevokeAndDeleteDevices() async throws {
        try await TestRelay.run(["RELAY_ADMIN_TOKEN": Self.token]) { relay in
            let first = try await relay.store.addDevice("robot-7", owners: ["alice"]).secret
            let owners = { (answer: (status: HTTPResponse.Status, json: [String: Any])) in (answer.json["device"] as? [String: Any])?["owners"] as? [String] }
            let granted = try await relay.request(.post, "/admin/devices/robot-7/owners", token: Self.token, body: #"{"owner":"bob"}"#)
            #expect(granted.status == .ok && owners(granted) == ["alice", "bob"])
            #expect(try await relay.request(.post, "/admin/devices/robot-7/owners", token: Self.token, body: #"{}"#).status == .badRequest)
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: first))")
            let bob = try await relay.app("bob", devices: nil)
            _ = try await relay.openSession(app: bob, device: device, deviceID: "robot-7")
            let ungranted = try await relay.request(.delete, "/admin/devices/robot-7/owners/bob", token: Self.token)
            #expect(ungranted.status == .ok && owners(ungranted) == ["alice"])
            try bob.send(["type": "webrtc_request", "device_id": "robot-7"])
            #expect(try await bob.next("error")["code"] as? String == "unauthorized")

            // Rotation: both secrets work until it is finished, then only the new one.
            let rotated = try await relay.request(.post, "/admin/devices/robot-7/rotate", token: Self.token)
            let second = try #require(rotated.json["secret"] as? String)
            #expect(rotated.status == .ok && second != first)
            // (the previous secret still works: this connect replaces the first socket)
            _ = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: first))")
            let finished = try await relay.request(.post, "/admin/devices/robot-7/rotate/finish", token: Self.token)
            #expect(finished.status == .ok && (finished.json["device"] as? [String: Any])?["secrets"] as? Int == 1)
            #expect(try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-7", secret: first))").status == .unauthorized)

            // Deleting needs a revoked device; a revoked one gets no new secret; unrevoked it connects again.
            let notRevoked = try await relay.request(.delete, "/admin/devices/robot-7?purge=true", token: Self.token)
            #expect(notRevoked.status == .conflict && (notRevoked.json["detail"] as? String)?.contains("revoke it first") == true)
            #expect(try await relay.request(.delete, "/admin/devices/robot-7", token: Self.token).status == .ok)
            let refused = try await relay.request(.post, "/admin/devices/robot-7/rotate", token: Self.token)
            #expect(refused.status == .conflict && (refused.json["detail"] as? String)?.contains("is revoked") == true)
            let unrevoked = try await relay.request(.post, "/admin/devices/robot-7/unrevoke", token: Self.token)
            #expect(unrevoked.status == .ok && (unrevoked.json["device"] as? [String: Any])?["revoked"] as? Bool == false)
            _ = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: second))")
            #expect(try await relay.request(.delete, "/admin/devices/robot-7", token: Self.token).status == .ok)
            let deleted = try await relay.request(.delete, "/admin/devices/robot-7?purge=true", token: Self.token)
            #expect(deleted.status == .ok && deleted.json["deleted"] as? Bool == true)
            #expect(try await relay.request(.get, "/admin/devices/robot-7", token: Self.token).status == .notFound)
        }
    }
}
