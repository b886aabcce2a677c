import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import Testing

/// Contract §8: `watch` and `device_status`, `GET /api/devices`.
@Suite(.timeLimit(.minutes(1))) struct PresenceTests {
    static func status(_ message: [String: Any]) -> String {
        "\(message["device_id"] as? String ?? "?") online=\(message["online"] as? Bool ?? false) sessions=\(message["sessions"] as? Int ?? -1)"
    }

    @Test func aWatchingAppHearsItsDeviceComeGoAndCountSessions() async throws {
        try await TestRelay.run(["RELAY_RESUME_GRACE_S": "10"]) { relay in
            let watcher = try await relay.app("alice", devices: ["robot-1"])
            try watcher.send(["type": "watch", "device_ids": ["robot-1", "robot-2"], "request_id": "w"])
            #expect(Self.status(try await watcher.next("device_status")) == "robot-1 online=false sessions=0")
            let refused = try await watcher.next("error")
            #expect(refused["code"] as? String == "unauthorized")
            #expect(refused["message"] as? String == "Not authorized: robot-2")
            #expect(refused["request_id"] as? String == "w")

            let device = try await relay.device()
            #expect(Self.status(try await watcher.next("device_status")) == "robot-1 online=true sessions=0")
            let caller = try await relay.app("bob", devices: ["robot-1"])
            let (credentials, _) = try await relay.openSession(app: caller, device: device)
            #expect(Self.status(try await watcher.next("device_status")) == "robot-1 online=true sessions=1")
            try caller.send(["type": "webrtc_close", "session_id": credentials["session_id"] as! String])
            #expect(Self.status(try await watcher.next("device_status")) == "robot-1 online=true sessions=0")
            // A dropped device is offline at once (reconnecting), and online again when it resumes.
            let token = try #require(device.hello["resume_token"] as? String)
            device.close()
            #expect(Self.status(try await watcher.next("device_status")) == "robot-1 online=false sessions=0")
            let resumed = try await TestSocket.connect(
                "ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery())&resume_token=\(token)&last_seq=0"
            )
            #expect(resumed.hello["resumed"] as? Bool == true)
            #expect(Self.status(try await watcher.next("device_status")) == "robot-1 online=true sessions=0")
            // Nothing else was said: every message was a change.
            try await watcher.expectNothingPending()

            // An empty watch stops the updates: when another watcher hears the device go, the
            // first one has nothing queued before the answer to its ping.
            try watcher.send(["type": "watch", "device_ids": [String]()])
            try watcher.send(["type": "ping"])
            _ = try await watcher.next("pong")
            let other = try await relay.app("carol", devices: ["robot-1"])
            try other.send(["type": "watch", "device_ids": ["robot-1"]])
            #expect(Self.status(try await other.next("device_status")) == "robot-1 online=true sessions=0")
            resumed.close()
            #expect(Self.status(try await other.next("device_status")) == "robot-1 online=false sessions=0")
            try watcher.send(["type": "ping"])
            #expect(try await watcher.next()["type"] as? String == "pong")
        }
    }

    @Test func devicesListsWhatTheUserMayReachWithPresence() async throws {
        try await TestRelay.run { relay in
            let secret = try await relay.store.addDevice("robot-7", owners: ["alice"], label: "Lab arm").secret
            _ = try await relay.store.addDevice("robot-8", owners: ["alice"])
            try await relay.store.revoke("robot-8")
            _ = try await relay.store.addDevice("robot-9", owners: ["bob"])
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            try device.send(["type": "device_info", "capabilities": ["video": ["h264", "vp8"], "model": "arm-2"]])
            try device.send(["type": "ping"])
            _ = try await device.next("pong")

            let token = relay.appToken("alice", devices: ["robot-1"])
            let listed = try await relay.request(.get, "/api/devices", token: token)
            #expect(listed.status == .ok)
            let devices = try #require(listed.json["devices"] as? [[String: Any]])
            #expect(devices.map { $0["device_id"] as? String } == ["robot-1", "robot-7"])
            let master = devices[0]
            #expect(master["online"] as? Bool == false)
            #expect(master["last_seen_at"] is NSNull)
            let arm = devices[1]
            #expect(arm["online"] as? Bool == true)
            #expect(arm["sessions"] as? Int == 0)
            #expect(arm["label"] as? String == "Lab arm")
            #expect((arm["capabilities"] as? [String: Any])?["model"] as? String == "arm-2")
            let seen = try #require(arm["last_seen_at"] as? String)
            #expect(try Date(seen, strategy: .iso8601).timeIntervalSinceNow > -60)

            // Gone, it keeps its last sighting and capabilities.
            device.close()
            let afterwards = try await eventually("the device to be offline") { () -> [String: Any]? in
                let json = try await relay.request(.get, "/api/devices", token: token).json
                let arm = (json["devices"] as? [[String: Any]])?.last
                return arm?["online"] as? Bool == false ? arm : nil
            }
            #expect(afterwards["last_seen_at"] is String)
            #expect((afterwards["capabilities"] as? [String: Any])?["model"] as? String == "arm-2")

            #expect(try await relay.request(.get, "/api/devices").status == .unauthorized)
            let bob = try await relay.request(.get, "/api/devices", token: relay.appToken("bob", devices: nil))
            #expect((bob.json["devices"] as? [[String: Any]])?.map { $0["device_id"] as? String } == ["robot-9"])
        }
    }
}
