import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import Testing

/// Contract §1.2–1.3 and §9: devices provisioned with `relay device`, rotation, revocation and
/// ownership, against the real relay and the real command line on one store.
@Suite(.timeLimit(.minutes(1))) struct RegistryTests {
    /// `relay device <arguments> --db <the relay's store> --json`, parsed.
    static func device(_ arguments: [String], relay: TestRelay) async throws -> (status: Int32, json: [String: Any], stderr: String) {
        let run = try await CommandLineTests.relay(["device"] + arguments + ["--db", relay.store.path, "--json"])
        let json = (try? JSONSerialization.jsonObject(with: Data(run.stdout.utf8)) as? [String: Any]) ?? [:]
        return (run.status, json, run.stderr)
    }

    @Test func deviceProvisionedWithTheCommandLineConnectsWithThePrintedSecret() async throws {
        try await TestRelay.run { relay in
            let added = try await Self.device(["add", "robot-7", "--owner", "alice", "--label", "Lab arm"], relay: relay)
            #expect(added.status == 0)
            let secret = try #require(added.json["secret"] as? String)
            #expect(secret.count == 64)
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            // The registry's secret comes before the master key's derived one.
            let derived = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-7"))")
            #expect(derived.status == .unauthorized)
            #expect(derived.detail == "Device signature is invalid")
            // alice owns it in the registry: her token need not name it.
            let app = try await relay.app("alice", devices: nil)
            let (_, request) = try await relay.openSession(app: app, device: device, deviceID: "robot-7")
            #expect(request["user_id"] as? String == "alice")

            let listed = try await Self.device(["list"], relay: relay)
            let devices = try #require(listed.json["devices"] as? [[String: Any]])
            #expect(devices.count == 1)
            #expect(devices.first?["device_id"] as? String == "robot-7")
            #expect(devices.first?["owners"] as? [String] == ["alice"])
            #expect(devices.first?["label"] as? String == "Lab arm")
            #expect(devices.first?["secret"] == nil)

            let again = try await Self.device(["add", "robot-7", "--owner", "bob"], relay: relay)
            #expect(again.status == 1)
            #expect(again.stderr == "relay device: device 'robot-7' is already registered\n")
            let malformed = try await Self.device(["add", "robot 7!"], relay: relay)
            #expect(malformed.status == 1)
            #expect(malformed.stderr.contains("is not a valid device id"))
        }
    }

    @Test func listPrintsATableForPeople() async throws {
        try await TestRelay.run { relay in
            _ = try await relay.store.addDevice("robot-7", owners: ["alice", "bob"], label: "Lab arm")
            let run = try await CommandLineTests.relay(["device", "list", "--db", relay.store.path])
            #expect(run.status == 0)
            let lines = run.stdout.split(separator: "\n")
            #expect(lines.first?.hasPrefix("DEVICE   OWNERS     LABEL    STATUS  SECRETS  CREATED") == true)
            #expect(lines.last?.hasPrefix("robot-7  alice,bob  Lab arm  active  1        ") == true)
            #expect(lines.last?.hasSuffix("never") == true)
        }
    }

    @Test func rotationKeepsBothSecretsValidUntilTheOldOneIsDropped() async throws {
        try await TestRelay.run { relay in
            let old = try #require(try await Self.device(["add", "robot-7"], relay: relay).json["secret"] as? String)
            let rotated = try await Self.device(["rotate", "robot-7"], relay: relay)
            #expect(rotated.status == 0)
            let new = try #require(rotated.json["secret"] as? String)
            #expect(new != old)
            for secret in [old, new] {
                let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
                #expect(device.hello["type"] as? String == "hello")
                device.close()
            }
            #expect(try await Self.device(["rotate", "robot-7", "--finish"], relay: relay).status == 0)
            let refused = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-7", secret: old))")
            #expect(refused.status == .unauthorized)
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: new))")
            #expect(device.hello["type"] as? String == "hello")
            #expect(try await Self.device(["rotate", "robot-8"], relay: relay).stderr == "relay device: device 'robot-8' is not registered\n")
        }
    }

    @Test func revokingFromTheCommandLineDisconnectsALiveDeviceAndClosesItsSessions() async throws {
        try await TestRelay.run(["RELAY_REGISTRY_POLL_MS": "100"]) { relay in
            let secret = try #require(try await Self.device(["add", "robot-7", "--owner", "alice"], relay: relay).json["secret"] as? String)
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            let app = try await relay.app("alice", devices: nil)
            let (credentials, _) = try await relay.openSession(app: app, device: device, deviceID: "robot-7")

            let revoked = try await Self.device(["revoke", "robot-7"], relay: relay)
            #expect(revoked.status == 0)
            #expect((revoked.json["device"] as? [String: Any])?["revoked"] as? Bool == true)

            let closed = try await app.next("webrtc_close")
            #expect(closed["session_id"] as? String == credentials["session_id"] as? String)
            #expect(closed["reason"] as? String == "device_revoked")
            #expect(closed["by"] as? String == "relay")
            #expect(try await device.next("webrtc_close")["reason"] as? String == "device_revoked")
            #expect(try await device.closeCode() == 1008)
            let again = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            #expect(again.status == .forbidden)
            #expect(again.detail == "Device is revoked")
        }
    }

    @Test func theCommandLineUngrantsUnrevokesAndDeletesAndWillNotRotateARevokedDevice() async throws {
        try await TestRelay.run { relay in
            let secret = try await relay.store.addDevice("robot-7", owners: ["alice", "bob"]).secret
            let ungranted = try await Self.device(["ungrant", "robot-7", "--owner", "bob"], relay: relay)
            #expect(ungranted.status == 0 && (ungranted.json["device"] as? [String: Any])?["owners"] as? [String] == ["alice"])
            let bob = try await relay.app("bob", devices: nil)
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            try bob.send(["type": "webrtc_request", "device_id": "robot-7"])
            #expect(try await bob.next("error")["code"] as? String == "unauthorized")

            #expect(try await Self.device(["delete", "robot-7"], relay: relay).stderr.contains("is not revoked: revoke it first"))
            #expect(try await Self.device(["revoke", "robot-7"], relay: relay).status == 0)
            #expect(try await device.closeCode() == 1008)
            let rotate = try await Self.device(["rotate", "robot-7"], relay: relay)
            #expect(rotate.status == 1 && rotate.stderr.contains("device 'robot-7' is revoked: unrevoke it first"))
            let refused = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            #expect(refused.status == .forbidden)

            let unrevoked = try await Self.device(["unrevoke", "robot-7"], relay: relay)
            #expect(unrevoked.status == 0 && (unrevoked.json["device"] as? [String: Any])?["revoked"] as? Bool == false)
            _ = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")

            #expect(try await Self.device(["revoke", "robot-7"], relay: relay).status == 0)
            let deleted = try await Self.device(["delete", "robot-7"], relay: relay)
            #expect(deleted.status == 0 && deleted.json["deleted"] as? Bool == true)
            #expect(try await relay.store.device("robot-7") == nil)
            #expect(try await Self.device(["unrevoke", "robot-7"], relay: relay).stderr.contains("device 'robot-7' is not registered"))
        }
    }

    @Test func ownershipIsRefusedUntilGranted() async throws {
        try await TestRelay.run { relay in
            let secret = try await relay.store.addDevice("robot-7", owners: ["alice"]).secret
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            let bob = try await relay.app("bob", devices: nil)
            try bob.send(["type": "webrtc_request", "device_id": "robot-7"])
            let refused = try await bob.next("error")
            #expect(refused["code"] as? String == "unauthorized")
            #expect(refused["message"] as? String == "Not authorized")

            let granted = try await Self.device(["grant", "robot-7", "--owner", "bob"], relay: relay)
            #expect(granted.status == 0)
            #expect((granted.json["device"] as? [String: Any])?["owners"] as? [String] == ["alice", "bob"])
            let (_, request) = try await relay.openSession(app: bob, device: device, deviceID: "robot-7")
            #expect(request["user_id"] as? String == "bob")
            // A token's devices claim grants too, without a registry row for the user.
            let carol = try await relay.app("carol", devices: ["robot-7"])
            _ = try await relay.openSession(app: carol, device: device, deviceID: "robot-7")
        }
    }
}
