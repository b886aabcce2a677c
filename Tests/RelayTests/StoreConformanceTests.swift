/// One set of cases run against both implementations of the session table: a relay alone on SQLite, and a fleet on PostgreSQL with the app and the device on different nodes.
import DeviceAuth
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import RelayTestSupport
import Testing

/// Where the rules of links, sessions and presence are kept: this process (`alone`), or the
/// shared store of a fleet, where apps connect to one node and devices to another (`fleet`).
enum StorePlacement: String, CaseIterable, Sendable, CustomTestStringConvertible {
    case alone
    case fleet

    var testDescription: String { rawValue }
}

/// Relays in one placement, with the node apps use and the node devices use.
struct PlacedRelay: Sendable {
    static let adminToken = "admin-secret-0123456789abcdef0123456789"
    let nodes: [RelayProcess]
    /// Apps connect to the first node, devices to the last (the same relay when alone).
    var apps: ProcessClient { ProcessClient(port: nodes[0].port) }
    var devices: ProcessClient { ProcessClient(port: nodes[nodes.count - 1].port) }

    static func start(_ placement: StorePlacement, _ extra: [String: String] = [:]) async throws -> PlacedRelay {
        let settings = extra.merging(["RELAY_ADMIN_TOKEN": adminToken]) { $1 }
        switch placement {
        case .alone:
            let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey].merging(settings) { $1 }
            return PlacedRelay(nodes: [try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)])
        case .fleet:
            // No registry rows: devices sign with the master key's derived secrets, as alone.
            return PlacedRelay(nodes: try await TestFleet.start(nodes: 2, devices: [], settings).nodes)
        }
    }

    func stop() {
        for node in nodes { node.kill() }
    }

    func device(_ deviceID: String) async throws -> TestSocket {
        try await devices.device(deviceID, secret: DeviceSignature.derivedSecret(deviceID: deviceID, masterKey: TestRelay.masterKey))
    }

    func app(_ userID: String) async throws -> TestSocket {
        try await apps.app(userID, devices: ["robot-1", "robot-2", "robot-3"])
    }

    /// robot-1 and alice, and a session alice opened with it.
    func call() async throws -> (robot: TestSocket, alice: TestSocket, sessionID: String) {
        let robot = try await device("robot-1")
        let alice = try await app("alice")
        return (robot, alice, try await apps.openSession(app: alice, device: robot, deviceID: "robot-1"))
    }

    /// An admin request to the apps' node (in a fleet, not the node holding the sessions).
    func admin(_ method: HTTPRequest.Method, _ path: String) async throws -> (status: HTTPResponse.Status, json: JSONObject) {
        let client = HTTPClient(port: nodes[0].port)
        let response = try await client.client.execute(.init(path, method: method, headers: [.authorization: "Bearer \(Self.adminToken)"]))
        await client.shutdown()
        let json = (try? JSONSerialization.jsonObject(with: Data(String(buffer: response.body ?? ByteBuffer()).utf8)) as? JSONObject) ?? [:]
        return (response.status, json)
    }

    /// `GET /api/devices` for `userID`, as the app's node answers it.
    func listedDevices(for userID: String) async throws -> [JSONObject] {
        let token = try AppTokenSigner(secret: Array(TestRelay.jwtSecret.utf8)).token(
            userID: userID,
            devices: ["robot-1", "robot-2", "robot-3"],
            now: Date().timeIntervalSince1970,
            lifetime: 600
        )
        let client = HTTPClient(port: nodes[0].port)
        let response = try await client.client.get("/api/devices", headers: [.authorization: "Bearer \(token)"])
        await client.shutdown()
        let json = try JSONSerialization.jsonObject(with: Data(String(buffer: response.body ?? ByteBuffer()).utf8)) as? JSONObject
        return json?["devices"] as? [JSONObject] ?? []
    }
}

/// The store conformance suite: what apps, devices and operators see must not depend on where
/// the rules are kept.
@Suite(.timeLimit(.minutes(2))) struct StoreConformanceTests {
    /// The answer to a `webrtc_request`: the error code, or the message type.
    static func outcome(of app: TestSocket, asking deviceID: String) async throws -> String {
        try app.send(["type": "webrtc_request", "device_id": deviceID])
        let answer = try await app.next()
        return answer["type"] as? String == "error" ? (answer["code"] as? String ?? "?") : (answer["type"] as? String ?? "?")
    }

    @Test(arguments: StorePlacement.allCases)
    func aSessionIsRefusedInTheContractsOrderAndItsPlaceIsFreedWhenItCloses(_ placement: StorePlacement) async throws {
        let relay = try await PlacedRelay.start(placement, ["RELAY_MAX_SESSIONS_PER_DEVICE": "1", "RELAY_MAX_SESSIONS_PER_APP": "2"])
        defer { relay.stop() }
        let alice = try await relay.app("alice")
        let bob = try await relay.app("bob")
        #expect(try await Self.outcome(of: alice, asking: "robot-1") == "device_offline")

        let robot1 = try await relay.device("robot-1")
        let robot2 = try await relay.device("robot-2")
        let robot3 = try await relay.device("robot-3")
        #expect(try await Self.outcome(of: alice, asking: "robot-1") == "webrtc_credentials")
        let request = try await robot1.next("webrtc_request")
        #expect(request["user_id"] as? String == "alice")
        let sessionID = try #require(request["session_id"] as? String)
        // The device's cap, for another user too; then the app link's own cap.
        #expect(try await Self.outcome(of: bob, asking: "robot-1") == "device_busy")
        #expect(try await Self.outcome(of: alice, asking: "robot-2") == "webrtc_credentials")
        _ = try await robot2.next("webrtc_request")
        #expect(try await Self.outcome(of: alice, asking: "robot-3") == "rate_limited")
        try await robot3.expectNothingPending()

        // Alice hangs up: the device hears who ended it, and its place is free again.
        try alice.send(["type": "webrtc_close", "session_id": sessionID])
        let closed = try await robot1.next("webrtc_close")
        #expect(closed["session_id"] as? String == sessionID && closed["by"] as? String == "app" && closed["reason"] as? String == "normal")
        #expect(try await alice.next("webrtc_close")["session_id"] as? String == sessionID)
        // In a fleet the place is the shared store's, free once the close is written behind it
        // (within RELAY_OUTBOX_FLUSH_MS): until then a new request hears `device_busy`.
        let again = try await eventually("the device's place to be free") { () -> String? in
            let outcome = try await Self.outcome(of: bob, asking: "robot-1")
            return outcome == "device_busy" ? nil : outcome
        }
        #expect(again == "webrtc_credentials")
        #expect(try await robot1.next("webrtc_request")["user_id"] as? String == "bob")
    }

    @Test(arguments: StorePlacement.allCases)
    func aDeviceThatConnectsAgainReplacesItsLinkAndItsSessionsEnd(_ placement: StorePlacement) async throws {
        let relay = try await PlacedRelay.start(placement)
        defer { relay.stop() }
        let (robot, alice, sessionID) = try await relay.call()

        let again = try await relay.device("robot-1")
        #expect(again.hello["resumed"] as? Bool == false)
        #expect(try await robot.closeCode() == 4002)
        let closed = try await alice.next("webrtc_close")
        #expect(closed["session_id"] as? String == sessionID && closed["reason"] as? String == "peer_disconnected" && closed["by"] as? String == "relay")
        // The new link takes sessions.
        #expect(try await Self.outcome(of: alice, asking: "robot-1") == "webrtc_credentials")
        _ = try await again.next("webrtc_request")
    }

    @Test(arguments: StorePlacement.allCases)
    func watchersAndTheDeviceListSeePresenceSessionsAndCapabilities(_ placement: StorePlacement) async throws {
        let relay = try await PlacedRelay.start(placement)
        defer { relay.stop() }
        let watcher = try await relay.app("bob")
        try watcher.send(["type": "watch", "device_ids": ["robot-1"]])
        var status = try await watcher.next("device_status")
        #expect(status["device_id"] as? String == "robot-1" && status["online"] as? Bool == false)

        let robot = try await relay.device("robot-1")
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == true && status["sessions"] as? Int == 0)
        try robot.send(["type": "device_info", "capabilities": ["camera": "front"], "cseq": 1])
        _ = try await robot.next("ack")
        let listed = try #require(try await relay.listedDevices(for: "bob").first { $0["device_id"] as? String == "robot-1" })
        #expect(listed["online"] as? Bool == true)
        #expect((listed["capabilities"] as? JSONObject)?["camera"] as? String == "front")

        let alice = try await relay.app("alice")
        let sessionID = try await relay.apps.openSession(app: alice, device: robot, deviceID: "robot-1")
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == true && status["sessions"] as? Int == 1)
        try alice.send(["type": "webrtc_close", "session_id": sessionID])
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == true && status["sessions"] as? Int == 0)
        robot.close()
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == false)
    }

    @Test(arguments: StorePlacement.allCases)
    func operatorsListAndEndLiveSessionsWhicheverNodeHoldsThem(_ placement: StorePlacement) async throws {
        let relay = try await PlacedRelay.start(placement)
        defer { relay.stop() }
        let (robot, alice, sessionID) = try await relay.call()

        // In a fleet the listing is the shared store's, which has the session open once the
        // live state is written behind the announcement (within RELAY_OUTBOX_FLUSH_MS).
        let sessions = try await eventually("the session to be listed open") { () -> [JSONObject]? in
            let listed = try await relay.admin(.get, "/admin/sessions").json["sessions"] as? [JSONObject]
            return listed?.first?["phase"] as? String == "open" ? listed : nil
        }
        #expect(sessions.map { $0["session_id"] as? String } == [sessionID])
        #expect(sessions.first?["user_id"] as? String == "alice" && sessions.first?["device_id"] as? String == "robot-1")
        #expect(sessions.first?["answered"] as? Bool == false)
        #expect(try await relay.admin(.get, "/admin/sessions/\(sessionID)").status == .ok)

        #expect(try await relay.admin(.delete, "/admin/sessions/\(sessionID)").status == .ok)
        for party in [robot, alice] {
            let closed = try await party.next("webrtc_close")
            #expect(closed["session_id"] as? String == sessionID && closed["reason"] as? String == "admin" && closed["by"] as? String == "relay")
        }
        // Gone everywhere: not listed, not found, not ended twice.
        _ = try await eventually("the session to leave the store") { () -> Bool? in
            try await relay.admin(.get, "/admin/sessions").json["sessions"].map { ($0 as? [Any])?.isEmpty == true ? true : nil } ?? nil
        }
        #expect(try await relay.admin(.get, "/admin/sessions/\(sessionID)").status == .notFound)
        #expect(try await relay.admin(.delete, "/admin/sessions/\(sessionID)").status == .notFound)
        try await alice.expectNothingPending()
        try await robot.expectNothingPending()
    }
}
