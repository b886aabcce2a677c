/// Several `relay serve` nodes on one PostgreSQL database behaving as one relay: sessions across nodes, the fleet-wide rules, a node killed or paused.
import DeviceAuth
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import Logging
import PostgresStore
import Registry
import RelayTestSupport
import Testing

/// Nodes of one fleet, started as processes on a fresh database of the tests' PostgreSQL, with
/// short beats so a node's death is seen in well under a second.
struct TestFleet: Sendable {
    let nodes: [RelayProcess]
    let secrets: [String: String]
    let server: PostgresServer
    let database: String
    let environment: [String: String]

    static func start(
        nodes count: Int,
        devices: [String] = ["robot-1"],
        on server: PostgresServer? = nil,
        _ extra: [String: String] = [:]
    ) async throws -> TestFleet {
        let server = if let server { server } else { try await PostgresServer.running() }
        let url = try await server.createDatabase()
        let store = try PostgresStore(url: url, role: "relay-test", logger: Logger(label: "relay-test"))
        let secrets = try await store.whileRunning {
            try await store.migrate()
            var secrets: [String: String] = [:]
            for device in devices {
                secrets[device] = try await store.addDevice(device, owners: ["alice", "bob", "carol", "dave", "erin"], label: "", now: Date()).secret
            }
            return secrets
        }
        // Beats of 400 ms: a node silent for 2 s (5 beats) is declared dead, short enough for the
        // paused-node test and long enough that a node starved of CPU by the tests running
        // beside it is not (at 200 ms one was, once, in a full local run).
        let environment = [
            "RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DATABASE_URL": url,
            "RELAY_NODE_HEARTBEAT_MS": "400", "RELAY_RESUME_GRACE_S": "20", "RELAY_LOG_LEVEL": "debug", "RELAY_RATE_BURST": "1000", "RELAY_RATE_PER_S": "1000",
        ].merging(extra) { $1 }
        var nodes: [RelayProcess] = []
        for _ in 0..<count {
            nodes.append(try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment))
        }
        return TestFleet(nodes: nodes, secrets: secrets, server: server, database: String(url.split(separator: "/").last!), environment: environment)
    }

    func client(_ node: Int) -> ProcessClient { ProcessClient(port: nodes[node].port) }

    func device(_ deviceID: String = "robot-1", on node: Int, resume: ProcessClient.Resume? = nil) async throws -> TestSocket {
        do {
            return try await client(node).device(deviceID, secret: secrets[deviceID]!, resume: resume)
        } catch {
            Issue.record("node \(node) refused the device: \(nodes[node].recentLog.suffix(3000))")
            throw error
        }
    }

    func stop() {
        for node in nodes { node.kill() }
    }

    /// Runs `body`; when it fails, what the nodes logged last goes with the failure.
    func explaining<T>(_ body: () async throws -> T) async throws -> T {
        do {
            return try await body()
        } catch {
            let logs = nodes.enumerated().map { node, process in
                process.recentLog.split(separator: "\n").filter { !$0.contains("ServiceLifecycle") && !$0.contains("PostgresNIO") }.suffix(30)
                    .map { "node \(node): \($0)" }.joined(separator: "\n")
            }
            Issue.record("\(error)\n\(logs.joined(separator: "\n"))")
            throw error
        }
    }

    /// Waits until the fleet's row of `sessionID` says `condition` (a node writes it behind).
    func sessionRow(_ sessionID: String, holds condition: String) async throws {
        _ = try await eventually("the session's row to be written") { () -> Bool? in
            try await server.sql("SELECT \(condition) FROM relay_session WHERE session_id = '\(sessionID)'", database: database) == "t" ? true : nil
        }
    }

    /// Waits until every message queued between nodes was delivered and what it caused written:
    /// a node killed before that leaves those messages to its taker, which delivers them again
    /// (contract §11: at least once; a reliable client ignores them by `peer_cseq`).
    func inboxIsEmpty() async throws {
        _ = try await eventually("the inbox to be empty") { () -> Bool? in
            try await server.sql("SELECT count(*) FROM relay_inbox", database: database) == "0" ? true : nil
        }
    }

    /// A node's state as the fleet's table says.
    func state(of node: Int) async throws -> [String] {
        try await server.sql("SELECT state FROM relay_node ORDER BY started_at", database: database).split(separator: "\n").map(String.init)
    }
}

/// One fleet at a time: each runs two or three relays and beats every 200 ms.
@Suite(.serialized, .timeLimit(.minutes(3))) struct FleetTests {
    /// Messages of `type` until `count` arrived, skipping `peer_status`; their `field` values.
    static func collect(_ count: Int, _ type: String, field: String, on socket: TestSocket) async throws -> [String] {
        var values: [String] = []
        while values.count < count {
            let message = try await RestartTests.next(type, on: socket)
            values.append(try #require((message[field] as? JSONObject)?["candidate"] as? String))
        }
        return values
    }

    @Test func anAppOnOneNodeAndADeviceOnAnotherHaveACallAsOnOneRelay() async throws {
        let fleet = try await TestFleet.start(nodes: 2)
        defer { fleet.stop() }
        let device = try await fleet.device(on: 1)
        let app = try await fleet.client(0).app("alice")
        try app.send(["type": "webrtc_request", "device_id": "robot-1", "request_id": "r1"])
        let credentials = try await app.next("webrtc_credentials")
        let sessionID = try #require(credentials["session_id"] as? String)
        let request = try await device.next("webrtc_request")
        #expect(request["session_id"] as? String == sessionID)
        #expect(request["user_id"] as? String == "alice")
        // The same ICE servers reach both sides.
        #expect((request["ice_servers"] as? JSONObject)?["ttl"] as? Int == (credentials["ice_servers"] as? JSONObject)?["ttl"] as? Int)

        // Both ways at once, through the database: every message once, in order.
        try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer"])
        for index in 0..<200 {
            try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "app-\(index)"]])
            try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "device-\(index)"]])
        }
        #expect(try await device.next("webrtc_offer")["sdp"] as? String == "offer")
        #expect(try await Self.collect(200, "webrtc_ice", field: "candidate", on: device) == (0..<200).map { "app-\($0)" })
        #expect(try await Self.collect(200, "webrtc_ice", field: "candidate", on: app) == (0..<200).map { "device-\($0)" })
        try device.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer"])
        #expect(try await app.next("webrtc_answer")["sdp"] as? String == "answer")

        // The app hangs up on its node; the device's node hears it and tells the device.
        try app.send(["type": "webrtc_close", "session_id": sessionID])
        let closed = try await device.next("webrtc_close")
        #expect(closed["session_id"] as? String == sessionID && closed["reason"] as? String == "normal" && closed["by"] as? String == "app")
        #expect(try await app.next("webrtc_close")["by"] as? String == "app")
        try await device.expectNothingPending()
        try await app.expectNothingPending()
        // The session is over everywhere: its row is gone, and its audit row says why.
        _ = try await eventually("the session's rows to settle") { () -> Bool? in
            let live = try await fleet.server.sql("SELECT count(*) FROM relay_session", database: fleet.database)
            let audited = try await fleet.server.sql("SELECT close_reason FROM relay_session_audit WHERE session_id = '\(sessionID)'", database: fleet.database)
            return live == "0" && audited == "normal" ? true : nil
        }
    }

    @Test func theDeviceCapAndTheReplaceRuleHoldAcrossTheFleet() async throws {
        let fleet = try await TestFleet.start(nodes: 3, ["RELAY_MAX_SESSIONS_PER_DEVICE": "4"])
        defer { fleet.stop() }
        let device = try await fleet.device(on: 0)
        // Five apps on three nodes ask for the device at once: four sessions, one device_busy.
        var apps: [TestSocket] = []
        for (index, user) in ["alice", "bob", "carol", "dave", "erin"].enumerated() {
            apps.append(try await fleet.client(index % 3).app(user))
        }
        for app in apps { try app.send(["type": "webrtc_request", "device_id": "robot-1"]) }
        var outcomes: [String] = []
        for app in apps {
            let answer = try await app.next()
            outcomes.append(answer["type"] as? String == "error" ? (answer["code"] as? String ?? "?") : (answer["type"] as? String ?? "?"))
        }
        #expect(outcomes.sorted() == ["device_busy", "webrtc_credentials", "webrtc_credentials", "webrtc_credentials", "webrtc_credentials"])
        for _ in 0..<4 { _ = try await device.next("webrtc_request") }

        // The device connects again on another node: the old link closes with 4002 and every
        // app hears its session end.
        let again = try await fleet.device(on: 2)
        #expect(again.hello["resumed"] as? Bool == false)
        #expect(try await device.closeCode() == 4002)
        for (app, outcome) in zip(apps, outcomes) where outcome == "webrtc_credentials" {
            let closed = try await RestartTests.next("webrtc_close", on: app)
            #expect(closed["reason"] as? String == "peer_disconnected")
            try await app.expectNothingPending()
        }
        // The new link takes sessions.
        try apps[0].send(["type": "webrtc_request", "device_id": "robot-1"])
        _ = try await apps[0].next("webrtc_credentials")
        _ = try await again.next("webrtc_request")
    }

    @Test func aKilledNodesLinksAreTakenOverAndItsCallsGoOn() async throws {
        let fleet = try await TestFleet.start(nodes: 2)
        defer { fleet.stop() }
        let device = try await fleet.device(on: 1)
        let app = try await fleet.client(0).app("alice")
        try app.send(["type": "webrtc_request", "device_id": "robot-1"])
        let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
        let request = try await device.next("webrtc_request")
        try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer"])
        let offer = try await device.next("webrtc_offer")
        let lastSeq = try #require(offer["seq"] as? Int)
        _ = request
        // Let the device's node write its live state (every 5 ms: the offer it delivered is
        // written and gone from its inbox), then kill it.
        try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")
        try await fleet.inboxIsEmpty()
        let killedAt = ContinuousClock.now
        await fleet.nodes[1].killed()

        // The other node declares it dead and takes its links: the app hears its peer is
        // reconnecting, and what it sends now waits for the device.
        let status = try await app.next("peer_status")
        #expect(status["status"] as? String == "reconnecting")
        let detected = ContinuousClock.now - killedAt
        #expect(detected < .seconds(3), "taken over after \(detected)")
        #expect(try await fleet.state(of: 1).contains("dead"))
        try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "while-away"]])

        // The device resumes on the surviving node: same link, what it missed, same session.
        let resumed = try await fleet.device(on: 0, resume: try ProcessClient.Resume(device.hello, lastSeq: lastSeq))
        #expect(resumed.hello["resumed"] as? Bool == true)
        #expect(resumed.hello["link_id"] as? String == device.hello["link_id"] as? String)
        let missed = try await resumed.next("webrtc_ice")
        #expect((missed["candidate"] as? JSONObject)?["candidate"] as? String == "while-away" && missed["seq"] as? Int == lastSeq + 1)
        #expect(try await app.next("peer_status")["status"] as? String == "connected")
        try resumed.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer"])
        #expect(try await app.next("webrtc_answer")["sdp"] as? String == "answer")
        try resumed.send(["type": "webrtc_close", "session_id": sessionID])
        #expect(try await app.next("webrtc_close")["by"] as? String == "device")
        #expect(try await resumed.next("webrtc_close")["session_id"] as? String == sessionID)
    }

    @Test func aPausedNodeThatWakesUpAfterTheFleetTookItsLinksStopsAndSendsNothingStale() async throws {
        let fleet = try await TestFleet.start(nodes: 2)
        defer { fleet.stop() }
        let device = try await fleet.device(on: 1)
        let app = try await fleet.client(0).app("alice")
        let sessionID = try await fleet.client(0).openSession(app: app, device: device, deviceID: "robot-1")
        try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")
        // Paused past 5 beats while holding its lock: the fleet ends its connection, declares
        // it dead and takes its links.
        let paused = fleet.nodes[1].process.processIdentifier
        kill(paused, SIGSTOP)
        #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")
        // Meanwhile the device says something to the paused node (it is read after the wake).
        try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "stale"]])
        kill(paused, SIGCONT)
        let status: Int32
        do {
            status = try await fleet.nodes[1].process.exited(within: .seconds(20))
        } catch {
            Issue.record(
                "\(fleet.nodes[1].recentLog.split(separator: "\n").filter { !$0.contains("PostgresNIO") && !$0.contains("Looking for") }.suffix(30).joined(separator: "\n"))"
            )
            throw error
        }
        #expect(status != 0)
        // Nothing the woken node read went anywhere: the app hears nothing more from it.
        try await app.expectNothingPending()
        try app.send(["type": "webrtc_close", "session_id": sessionID])
        #expect(try await app.next("webrtc_close")["by"] as? String == "app")
    }

    @Test func aClientResumesOnAnotherNodeWhileItsOldNodeStillHoldsItsSocket() async throws {
        let fleet = try await TestFleet.start(nodes: 2)
        defer { fleet.stop() }
        try await fleet.explaining { try await resumeOnAnotherNode(fleet) }
    }

    func resumeOnAnotherNode(_ fleet: TestFleet) async throws {
        let device = try await fleet.device(on: 1)
        let app = try await fleet.client(0).app("alice")
        let sessionID = try await fleet.client(0).openSession(app: app, device: device, deviceID: "robot-1")
        try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer"])
        let lastSeq = try #require(try await device.next("webrtc_offer")["seq"] as? Int)
        // Two more the device has not processed when it resumes elsewhere (its old socket on
        // node 1 is still open: node 1 thinks it is alive).
        for index in 0..<2 { try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "c-\(index)"]]) }
        for _ in 0..<2 { _ = try await device.next("webrtc_ice") }

        let moved = try await fleet.device(on: 0, resume: try ProcessClient.Resume(device.hello, lastSeq: lastSeq))
        #expect(moved.hello["resumed"] as? Bool == true)
        #expect(moved.hello["link_id"] as? String == device.hello["link_id"] as? String)
        var replayed: [String] = []
        for _ in 0..<2 {
            let message = try await moved.next("webrtc_ice")
            replayed.append("\(message["seq"] as? Int ?? -1):\((message["candidate"] as? JSONObject)?["candidate"] as? String ?? "")")
        }
        #expect(replayed == ["\(lastSeq + 1):c-0", "\(lastSeq + 2):c-1"])
        // The old node let go of the socket it still held.
        _ = try await device.closeCode()
        // The call goes on between the two links, now both on node 0.
        try moved.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer"])
        let answer = try await RestartTests.next("webrtc_answer", on: app)
        #expect(answer["sdp"] as? String == "answer")

        // Now the app resumes on node 1: the link moves again, the session goes on across nodes.
        let appLast = try #require(try await app.expectNothingPendingSeq() ?? answer["seq"] as? Int)
        let movedApp = try await fleet.client(1).app("alice", resume: try ProcessClient.Resume(app.hello, lastSeq: appLast))
        #expect(movedApp.hello["resumed"] as? Bool == true)
        try moved.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "after-move"]])
        let candidate = try await RestartTests.next("webrtc_ice", on: movedApp)
        #expect((candidate["candidate"] as? JSONObject)?["candidate"] as? String == "after-move")
        try movedApp.send(["type": "webrtc_close", "session_id": sessionID])
        #expect(try await RestartTests.next("webrtc_close", on: moved)["by"] as? String == "app")
        #expect(try await RestartTests.next("webrtc_close", on: movedApp)["by"] as? String == "app")
    }

    @Test func aDrainedNodesDeviceResumesOnAnotherAndItsCallsStayOpen() async throws {
        let fleet = try await TestFleet.start(nodes: 2, ["RELAY_SHUTDOWN_DRAIN_S": "5"])
        defer { fleet.stop() }
        let device = try await fleet.device(on: 1)
        var apps: [TestSocket] = []
        var sessions: [String] = []
        for user in ["alice", "bob", "carol", "dave"] {
            let app = try await fleet.client(0).app(user)
            sessions.append(try await fleet.client(0).openSession(app: app, device: device, deviceID: "robot-1"))
            apps.append(app)
        }
        kill(fleet.nodes[1].process.processIdentifier, SIGTERM)
        let goAway = try await device.next("go_away")
        #expect(goAway["reconnect_after_ms"] as? Int != nil)
        let lastSeq = try #require(goAway["seq"] as? Int)
        let resumed = try await fleet.device(on: 0, resume: try ProcessClient.Resume(device.hello, lastSeq: lastSeq))
        #expect(resumed.hello["resumed"] as? Bool == true)
        // Every session goes on: each app reaches the device on its new node, nobody hears a close.
        for (app, sessionID) in zip(apps, sessions) {
            try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "after-drain"])
            let offer = try await RestartTests.next("webrtc_offer", on: resumed)
            #expect(offer["session_id"] as? String == sessionID)
        }
        #expect(try await fleet.nodes[1].process.exited(within: .seconds(20)) == 0)
        for app in apps { try await app.expectNothingPendingBut("peer_status") }
        try await resumed.expectNothingPending()
    }

    @Test func presenceIsFleetWideAndAWatcherWhoseListenerWasCutResyncs() async throws {
        // Beats long enough that the node connects again well before the fleet could take a
        // node whose lock is free for dead (2 beats), even on a loaded machine.
        let fleet = try await TestFleet.start(nodes: 2, ["RELAY_NODE_HEARTBEAT_MS": "1000"])
        defer { fleet.stop() }
        let watcher = try await fleet.client(0).app("alice")
        try watcher.send(["type": "watch", "device_ids": ["robot-1"]])
        var status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == false)

        // The device comes online on the other node, says what it can, and takes a session.
        let device = try await fleet.device(on: 1)
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == true && status["sessions"] as? Int == 0)
        try device.send(["type": "device_info", "capabilities": ["camera": "front"]])
        let app = try await fleet.client(1).app("bob")
        let sessionID = try await fleet.client(1).openSession(app: app, device: device, deviceID: "robot-1")
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == true && status["sessions"] as? Int == 1)

        // GET /api/devices on the watcher's node sees the device on the other node.
        let http = HTTPClient(port: fleet.nodes[0].port)
        let token = try AppTokenSigner(secret: Array(TestRelay.jwtSecret.utf8)).token(userID: "alice", devices: nil, now: Date().timeIntervalSince1970, lifetime: 600)
        let listed = try await http.client.get("/api/devices", headers: [.authorization: "Bearer \(token)"])
        let devices = try #require((try JSONSerialization.jsonObject(with: Data(String(buffer: listed.body ?? .init()).utf8)) as? JSONObject)?["devices"] as? [JSONObject])
        let robot = try #require(devices.first { $0["device_id"] as? String == "robot-1" })
        #expect(robot["online"] as? Bool == true && robot["sessions"] as? Int == 1)
        // What the device said of itself is written beside its link (the device's next
        // messages wait for it; a listing elsewhere may come first).
        _ = try await eventually("the device's capabilities to be listed") { () -> Bool? in
            let listed = try await http.client.get("/api/devices", headers: [.authorization: "Bearer \(token)"])
            let object = try JSONSerialization.jsonObject(with: Data(String(buffer: listed.body ?? .init()).utf8)) as? JSONObject
            let robot = (object?["devices"] as? [JSONObject])?.first { $0["device_id"] as? String == "robot-1" }
            return (robot?["capabilities"] as? JSONObject)?["camera"] as? String == "front" ? true : nil
        }
        await http.shutdown()

        // The watcher's node loses its listening connection while the session ends: it reads
        // the status again once it listens again, and the watcher hears it.
        try await fleet.server.sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'relay-node-' || (SELECT node_id FROM relay_node ORDER BY started_at LIMIT 1)",
            database: fleet.database
        )
        try app.send(["type": "webrtc_close", "session_id": sessionID])
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == true && status["sessions"] as? Int == 0)
        device.close()
        status = try await watcher.next("device_status")
        #expect(status["online"] as? Bool == false)
    }

    @Test func aSignedDeviceURLIsSpentOnEveryNodeAndRevocationAndAdminReachAcrossTheFleet() async throws {
        let fleet = try await TestFleet.start(nodes: 3, ["RELAY_ADMIN_TOKEN": "admin-secret-0123456789abcdef0123456789", "RELAY_REGISTRY_POLL_MS": "100"])
        defer { fleet.stop() }
        // One signed URL, used on node 0 then replayed on node 1: refused.
        let query = ProcessClient.signedQuery("robot-1", secret: fleet.secrets["robot-1"]!)
        let device = try await TestSocket.connect("ws://127.0.0.1:\(fleet.nodes[0].port)/ws/device?\(query)")
        let replay = try RawConnection.open(port: fleet.nodes[1].port)
        let refused = try await replay.request(RawFrame.upgradeRequest(port: fleet.nodes[1].port, pathAndQuery: "/ws/device?\(query)"))
        #expect(refused.hasPrefix("HTTP/1.1 401"), "\(refused)")
        #expect(refused.contains("nonce"), "\(refused)")

        // An operator on node 2 lists the sessions held on node 0 and ends one of them.
        let app = try await fleet.client(1).app("alice")
        let sessionID = try await fleet.client(1).openSession(app: app, device: device, deviceID: "robot-1")
        let admin = HTTPClient(port: fleet.nodes[2].port)
        let headers: HTTPFields = [.authorization: "Bearer admin-secret-0123456789abcdef0123456789"]
        let listed = try await admin.client.get("/admin/sessions", headers: headers)
        let sessions = (try JSONSerialization.jsonObject(with: Data(String(buffer: listed.body ?? .init()).utf8)) as? JSONObject)?["sessions"] as? [JSONObject]
        #expect(sessions?.map { $0["session_id"] as? String } == [sessionID])
        let ended = try await admin.client.delete("/admin/sessions/\(sessionID)", headers: headers, body: .init())
        #expect(ended.status == .ok)
        #expect(try await RestartTests.next("webrtc_close", on: device)["reason"] as? String == "admin")
        #expect(try await RestartTests.next("webrtc_close", on: app)["reason"] as? String == "admin")

        // Revoked on node 2: node 0 closes the device's socket (1008).
        let revoked = try await admin.client.delete("/admin/devices/robot-1", headers: headers, body: .init())
        #expect(revoked.status == .ok)
        #expect(try await device.closeCode() == 1008)
        await admin.shutdown()
    }

    @Test func whilePostgreSQLIsDownCallsOnOneNodeGoOnCrossNodeSetUpsFailCleanlyAndNoNodeExits() async throws {
        // A server of its own: this test stops it.
        let server = try await PostgresServer.startPrivate()
        do {
            let fleet = try await TestFleet.start(nodes: 2, devices: ["robot-1", "robot-2"], on: server)
            defer { fleet.stop() }
            let local = try await fleet.device("robot-1", on: 0)
            let remote = try await fleet.device("robot-2", on: 1)
            let app = try await fleet.client(0).app("alice")
            let sessionID = try await fleet.client(0).openSession(app: app, device: local, deviceID: "robot-1")

            try await server.stop()
            // The call on one node goes on: it never needed the database.
            try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer-1"])
            #expect(try await local.next("webrtc_offer")["sdp"] as? String == "offer-1")
            try local.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer-1"])
            #expect(try await app.next("webrtc_answer")["sdp"] as? String == "answer-1")
            // A set-up across nodes needs it: a clear error, at once.
            try app.send(["type": "webrtc_request", "device_id": "robot-2", "request_id": "across"])
            let refused = try await app.next("error")
            #expect(refused["code"] as? String == "device_offline" && refused["request_id"] as? String == "across")
            #expect((refused["message"] as? String)?.contains("store") == true)
            // Alive, not ready.
            for node in fleet.nodes {
                let http = HTTPClient(port: node.port)
                #expect(try await http.client.get("/healthz").status == .ok)
                #expect(try await http.client.get("/readyz").status == .serviceUnavailable)
                await http.shutdown()
            }

            try await server.start()
            // Back: every node ready again, none exited or was declared dead, and a set-up
            // across nodes works.
            for node in fleet.nodes {
                let http = HTTPClient(port: node.port)
                _ = try await eventually("node \(node.port) to be ready again", timeout: .seconds(30)) {
                    try await http.client.get("/readyz").status == .ok ? true : nil
                }
                await http.shutdown()
                #expect(node.process.isRunning)
            }
            #expect(try await fleet.state(of: 0) == ["serving", "serving"])
            let across = try await eventually("a set-up across nodes to work again") { () -> String? in
                try app.send(["type": "webrtc_request", "device_id": "robot-2"])
                let answer = try await app.next()
                return answer["type"] as? String == "webrtc_credentials" ? answer["session_id"] as? String : nil
            }
            #expect(try await remote.next("webrtc_request")["session_id"] as? String == across)
            try app.send(["type": "webrtc_close", "session_id": sessionID])
            #expect(try await local.next("webrtc_close")["reason"] as? String == "normal")
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    @Test func httpFallbacksWorkAcrossNodes() async throws {
        let fleet = try await TestFleet.start(nodes: 3)
        defer { fleet.stop() }
        // The app streams events from node 0 and sends through node 1; the device long-polls
        // on node 1 and sends through node 2.
        let token = try AppTokenSigner(secret: Array(TestRelay.jwtSecret.utf8)).token(userID: "alice", devices: nil, now: Date().timeIntervalSince1970, lifetime: 600)
        let appHello = try await openHTTPLink(port: fleet.nodes[0].port, .app(token: token))
        let app = try await EventStreamParty(port: fleet.nodes[0].port, hello: appHello, sendPort: fleet.nodes[1].port)
        let deviceHello = try await openHTTPLink(port: fleet.nodes[1].port, .device(query: ProcessClient.signedQuery("robot-1", secret: fleet.secrets["robot-1"]!)))
        let device = PollParty(port: fleet.nodes[1].port, hello: deviceHello, sendPort: fleet.nodes[2].port, sendsAlone: true)

        try await app.send(["type": "webrtc_request", "device_id": "robot-1"])
        let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
        _ = try await device.next("webrtc_request")
        defer {
            if let failure = device.failure {
                let logs = fleet.nodes.enumerated().map { node, process in
                    process.recentLog.split(separator: "\n").filter { !$0.contains("ServiceLifecycle") && !$0.contains("PostgresNIO") }.suffix(25)
                        .map { "node \(node): \($0)" }.joined(separator: "\n")
                }
                Issue.record("\(failure)\n\(logs.joined(separator: "\n"))")
            }
        }
        for index in 0..<30 {
            try await app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "app-\(index)"]])
            try await device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "device-\(index)"]])
        }
        var fromApp: [String] = []
        while fromApp.count < 30 {
            let message = try await device.next()
            guard message["type"] as? String == "webrtc_ice" else { continue }
            fromApp.append((message["candidate"] as? JSONObject)?["candidate"] as? String ?? "")
        }
        var fromDevice: [String] = []
        while fromDevice.count < 30 {
            let message = try await app.next()
            guard message["type"] as? String == "webrtc_ice" else { continue }
            fromDevice.append((message["candidate"] as? JSONObject)?["candidate"] as? String ?? "")
        }
        #expect(fromApp == (0..<30).map { "app-\($0)" })
        #expect(fromDevice == (0..<30).map { "device-\($0)" })
        // An error about a message sent through another node comes back on the link.
        try await app.send(["type": "webrtc_offer", "session_id": "no-such-session", "sdp": "x"])
        var error: JSONObject = [:]
        repeat { error = try await app.next() } while error["type"] as? String != "error"
        #expect(error["code"] as? String == "unknown_session")
        try await app.send(["type": "webrtc_close", "session_id": sessionID])
        var closed: JSONObject = [:]
        repeat { closed = try await device.next() } while closed["type"] as? String != "webrtc_close"
        #expect(closed["by"] as? String == "app")
        await app.vanish()
        await device.vanish()
    }

    @Test func aSessionsSetUpTimeoutStillFiresWhenTheNodeRunningItsTimersIsKilled() async throws {
        let fleet = try await TestFleet.start(nodes: 2, ["RELAY_SETUP_TIMEOUT_S": "3"])
        defer { fleet.stop() }
        try await fleet.explaining {
            // The device's node runs the session's timers; the app is on the other node.
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(0).app("alice")
            let requested = ContinuousClock.now
            let sessionID = try await fleet.client(0).openSession(app: app, device: device, deviceID: "robot-1")
            try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")
            try await fleet.inboxIsEmpty()
            await fleet.nodes[1].killed()
            // Nobody answers: the node that took the device's link over closes the session when
            // its set-up time is up, and the app hears why.
            let closed = try await RestartTests.next("webrtc_close", on: app)
            #expect(closed["session_id"] as? String == sessionID)
            #expect(closed["reason"] as? String == "setup_timeout")
            let took = ContinuousClock.now - requested
            #expect(took >= .seconds(3) && took < .seconds(8), "closed after \(took)")
        }
    }
}

extension FleetTests {
    /// CLUSTER_DESIGN §15 cases 4 and 12: messages queued for a link on another node arrive
    /// once and in order when that node loses its listening connection in the middle of a
    /// burst (it reconnects and reads what it missed), and when the link moves to a third node
    /// while a burst is on its way (what the old node had read or was still to read goes along).
    @Test func messagesInFlightWhileTheListenerIsCutOrTheLinkMovesArriveOnceInOrder() async throws {
        // Beats long enough that the cut node connects again well before the fleet could take
        // a node whose lock is free for dead (2 beats), even on a loaded machine.
        let fleet = try await TestFleet.start(nodes: 3, ["RELAY_NODE_HEARTBEAT_MS": "1000"])
        defer { fleet.stop() }
        try await fleet.explaining {
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(0).app("alice")
            let sessionID = try await fleet.client(0).openSession(app: app, device: device, deviceID: "robot-1")
            func burst(_ numbers: Range<Int>) throws {
                for number in numbers {
                    try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "c-\(number)"]])
                }
            }
            // (At most 256 in flight to the device: more unsent at once is a reader too slow for
            // its link, contract §5, and a node that reads its inbox after a gap may hand them
            // over in one go.)
            try burst(0..<120)
            let cut = try await fleet.server.sql(
                """
                SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE application_name = 'relay-node-' || (SELECT node_id FROM relay_node ORDER BY started_at OFFSET 1 LIMIT 1)
                """,
                database: fleet.database
            )
            #expect(cut == "t", "the device's node had no listening connection to cut")
            try burst(120..<240)
            #expect(try await Self.collect(240, "webrtc_ice", field: "candidate", on: device) == (0..<240).map { "c-\($0)" })
            let lastSeq = try #require(try await device.expectNothingPendingSeq())

            // The device resumes on node 2 while the next burst is on its way to node 1.
            // (Fewer than the link keeps: 256.)
            try burst(240..<440)
            let moved = try await fleet.device(on: 2, resume: try ProcessClient.Resume(device.hello, lastSeq: lastSeq))
            #expect(moved.hello["resumed"] as? Bool == true)
            #expect(try await Self.collect(200, "webrtc_ice", field: "candidate", on: moved) == (240..<440).map { "c-\($0)" })
            try await moved.expectNothingPendingBut("peer_status")
            _ = try await device.closeCode()
            // The call goes on both ways from the link's new node.
            try moved.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer"])
            #expect(try await RestartTests.next("webrtc_answer", on: app)["sdp"] as? String == "answer")
            try await app.expectNothingPendingBut("peer_status")
        }
    }

    /// CLUSTER_DESIGN §10: a user's `POST /api/turn/credentials` limit is one bucket for the
    /// whole fleet, whichever node each request lands on.
    @Test func aUsersTURNCredentialLimitHoldsAcrossTheFleet() async throws {
        let fleet = try await TestFleet.start(nodes: 3, ["RELAY_TURN_RATE_PER_MIN": "3"])
        defer { fleet.stop() }
        let signer = AppTokenSigner(secret: Array(TestRelay.jwtSecret.utf8))
        func bearer(_ user: String) throws -> HTTPFields {
            [.authorization: "Bearer \(try signer.token(userID: user, devices: nil, now: Date().timeIntervalSince1970, lifetime: 600))"]
        }
        let clients = fleet.nodes.map { HTTPClient(port: $0.port) }
        for client in clients {
            #expect(try await client.post("/api/turn/credentials", headers: try bearer("alice"), json: nil).status == .ok)
        }
        let refused = try await clients[1].client.post("/api/turn/credentials", headers: try bearer("alice"), body: ByteBuffer())
        #expect(refused.status == .tooManyRequests)
        #expect((Int(refused.headers[.retryAfter] ?? "") ?? 0) >= 1, "\(refused.headers)")
        // Another user has a bucket of their own.
        #expect(try await clients[2].post("/api/turn/credentials", headers: try bearer("bob"), json: nil).status == .ok)
        for client in clients { await client.shutdown() }
    }

    /// CLUSTER_DESIGN §15 case 2: a link whose connection ended without a close frame (a reset,
    /// or a FIN) on one node resumes on another with `last_seq` behind what it was sent (exactly
    /// what it missed, in order), equal (nothing), and ahead of it (taken as complete: what
    /// comes next is numbered after the client's `last_seq`); the app hears `reconnecting` and
    /// `connected`.
    @Test(arguments: [AbruptClient.Ending.reset, .fin])
    func aLinkResumesOnAnotherNodeWithLastSeqBehindEqualAndAhead(_ ending: AbruptClient.Ending) async throws {
        let fleet = try await TestFleet.start(nodes: 3)
        defer { fleet.stop() }
        try await fleet.explaining {
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(0).app("alice")
            let sessionID = try await fleet.client(0).openSession(app: app, device: device, deviceID: "robot-1")
            let lastSeq = try #require(try await device.expectNothingPendingSeq())
            let secret = try #require(fleet.secrets["robot-1"])
            func path(after seq: Int) throws -> String {
                "/ws/device?\(ProcessClient.signedQuery("robot-1", secret: secret))&\(try ProcessClient.Resume(device.hello, lastSeq: seq).query)"
            }
            func candidates(_ numbers: Range<Int>) throws {
                for number in numbers {
                    try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "c-\(number)"]])
                }
            }
            // The app hears the device's status change (a move between nodes may add a pair).
            func until(_ status: String) async throws {
                while try await app.next("peer_status")["status"] as? String != status {}
            }

            // The robot's network changes: a transport on node 2 takes the link over (from node
            // 1, whose socket closes) and its connection ends without a close frame.
            try await AbruptClient.connectThenDrop(port: fleet.nodes[2].port, pathAndQuery: try path(after: lastSeq), ending: ending)
            _ = try await device.closeCode()
            try await until("reconnecting")
            try candidates(0..<8)
            try await app.expectNothingPendingBut("peer_status")

            // Behind: on node 0, exactly the 8 it missed, in order.
            let behind = try await TestSocket.connect("ws://127.0.0.1:\(fleet.nodes[0].port)\(try path(after: lastSeq))")
            #expect(behind.hello["resumed"] as? Bool == true)
            var received: [String] = []
            for _ in 0..<8 {
                let message = try await RestartTests.next("webrtc_ice", on: behind)
                received.append("\(message["seq"] as? Int ?? -1):\((message["candidate"] as? JSONObject)?["candidate"] as? String ?? "")")
            }
            #expect(received == (0..<8).map { "\(lastSeq + 1 + $0):c-\($0)" })
            try await until("connected")
            // (A ping's pong is numbered too.)
            let behindLast = try #require(try await behind.expectNothingPendingSeq())

            // Equal: it drops and resumes on node 1 having processed everything: nothing again.
            behind.close()
            _ = try await behind.closeCode()
            try await until("reconnecting")
            let equal = try await TestSocket.connect("ws://127.0.0.1:\(fleet.nodes[1].port)\(try path(after: behindLast))")
            #expect(equal.hello["resumed"] as? Bool == true)
            try await until("connected")
            try equal.send(["type": "ping"])
            let equalPong = try await equal.next("pong")
            #expect(equalPong["seq"] as? Int == behindLast + 1, "nothing came before the pong")
            let equalLast = try #require(equalPong["seq"] as? Int)

            // Ahead: one more message is kept for it while it is away, and it resumes on node 2
            // saying it has processed two beyond that: complete; the next is numbered after it.
            equal.close()
            _ = try await equal.closeCode()
            try await until("reconnecting")
            try candidates(8..<9)
            try await app.expectNothingPendingBut("peer_status")
            let ahead = try await TestSocket.connect("ws://127.0.0.1:\(fleet.nodes[2].port)\(try path(after: equalLast + 3))")
            #expect(ahead.hello["resumed"] as? Bool == true)
            try await until("connected")
            try candidates(9..<10)
            let next = try await RestartTests.next("webrtc_ice", on: ahead)
            #expect(next["seq"] as? Int == equalLast + 4)
            #expect((next["candidate"] as? JSONObject)?["candidate"] as? String == "c-9")
        }
    }

    /// CLUSTER_DESIGN §15 case 6, its last part: a killed node's device that never comes back
    /// ends its sessions after the resume grace, on the node that took its link over; the app on
    /// another node hears `peer_disconnected`, and the audit says so.
    @Test func aKilledNodesDeviceThatNeverComesBackEndsItsSessionsAfterTheGrace() async throws {
        let fleet = try await TestFleet.start(nodes: 2, ["RELAY_RESUME_GRACE_S": "2"])
        defer { fleet.stop() }
        try await fleet.explaining {
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(0).app("alice")
            let sessionID = try await fleet.client(0).openSession(app: app, device: device, deviceID: "robot-1")
            try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer"])
            _ = try await app.next("webrtc_offer")
            try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")
            try await fleet.inboxIsEmpty()
            await fleet.nodes[1].killed()
            #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")
            let reconnecting = ContinuousClock.now
            let closed = try await app.next("webrtc_close")
            #expect(closed["session_id"] as? String == sessionID && closed["reason"] as? String == "peer_disconnected" && closed["by"] as? String == "relay")
            let waited = ContinuousClock.now - reconnecting
            #expect(waited >= .seconds(1) && waited < .seconds(6), "closed \(waited) after the takeover")
            try await app.expectNothingPending()
            let audited = try await eventually("the audit row") { () -> String? in
                let row = try await fleet.server.sql("SELECT close_reason FROM relay_session_audit WHERE session_id = '\(sessionID)'", database: fleet.database)
                return row.isEmpty ? nil : row
            }
            #expect(audited == "peer_disconnected")
        }
    }

    /// CLUSTER_DESIGN §15 case 7, its other half: the node running a session's timers is killed
    /// and the node that takes its device's link over refreshes the ICE servers when they are
    /// due (80 % of a 60 s ttl), for both parties, each on its own node.
    @Test func aSessionsICEServersAreStillRefreshedWhenTheNodeRunningItsTimersIsKilled() async throws {
        let fleet = try await TestFleet.start(nodes: 3)
        defer { fleet.stop() }
        try await fleet.explaining {
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(0).app("alice")
            let requested = ContinuousClock.now
            try app.send(["type": "webrtc_request", "device_id": "robot-1", "ttl": 60])
            let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
            let request = try await device.next("webrtc_request")
            try device.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer"])
            _ = try await app.next("webrtc_offer")
            try app.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer"])
            let lastSeq = try #require(try await device.next("webrtc_answer")["seq"] as? Int)
            _ = request
            try await fleet.sessionRow(sessionID, holds: "answered")
            try await fleet.inboxIsEmpty()
            await fleet.nodes[1].killed()
            #expect(try await app.next("peer_status")["status"] as? String == "reconnecting")
            // The device resumes on node 2 (its link comes from the node that took it over).
            let resumed = try await fleet.device(on: 2, resume: try ProcessClient.Resume(device.hello, lastSeq: lastSeq))
            #expect(resumed.hello["resumed"] as? Bool == true)
            let appRefresh = try await RestartTests.next("ice_servers_refresh", on: app, within: .seconds(70))
            let deviceRefresh = try await RestartTests.next("ice_servers_refresh", on: resumed, within: .seconds(20))
            #expect(appRefresh["session_id"] as? String == sessionID && deviceRefresh["session_id"] as? String == sessionID)
            #expect((appRefresh["ice_servers"] as? JSONObject)?["ttl"] as? Int == 60)
            let took = ContinuousClock.now - requested
            #expect(took >= .seconds(47) && took < .seconds(58), "refreshed \(took) after the request")
        }
    }

    /// CLUSTER_DESIGN §15 case 18: a device added on one node, its secret rotated and a user
    /// granted with `relay device` on the fleet's database, hold on every node at once; the
    /// audit of a call whose device's node was killed is complete when the call ends.
    @Test func registryWritesHoldOnEveryNodeAndACallIsAuditedThroughAKill() async throws {
        let adminToken = "admin-secret-0123456789abcdef0123456789"
        let fleet = try await TestFleet.start(nodes: 3, ["RELAY_ADMIN_TOKEN": adminToken])
        defer { fleet.stop() }
        try await fleet.explaining {
            let admin = HTTPClient(port: fleet.nodes[0].port)
            let added = try await admin.client.post(
                "/admin/devices",
                headers: [.authorization: "Bearer \(adminToken)", .contentType: "application/json"],
                body: ByteBuffer(string: #"{"device_id":"robot-2","owners":["alice"]}"#)
            )
            await admin.shutdown()
            #expect(added.status == .created)
            let firstSecret = try #require(
                (try JSONSerialization.jsonObject(with: Data(String(buffer: added.body ?? .init()).utf8)) as? JSONObject)?["secret"] as? String
            )
            // Added on node 0, the device connects on node 1.
            let device = try await fleet.client(1).device("robot-2", secret: firstSecret)

            // Rotated and finished with the CLI: the old secret is refused on node 2, the new
            // one taken there (its link replaces the one on node 1).
            let url = try #require(fleet.environment["RELAY_DATABASE_URL"])
            let rotated = try await CommandLineTests.relay(["device", "rotate", "robot-2", "--json", "--database-url", url])
            #expect(rotated.status == 0, "\(rotated.stderr)")
            let newSecret = try #require(
                (try JSONSerialization.jsonObject(with: Data(rotated.stdout.utf8)) as? JSONObject)?["secret"] as? String
            )
            let finished = try await CommandLineTests.relay(["device", "rotate", "robot-2", "--finish", "--database-url", url])
            #expect(finished.status == 0, "\(finished.stderr)")
            let oldSigned = ProcessClient.signedQuery("robot-2", secret: firstSecret)
            let refused = try await RawConnection.open(port: fleet.nodes[2].port)
                .request(RawFrame.upgradeRequest(port: fleet.nodes[2].port, pathAndQuery: "/ws/device?\(oldSigned)"))
            #expect(refused.hasPrefix("HTTP/1.1 401"), "\(refused)")
            let again = try await fleet.client(2).device("robot-2", secret: newSecret)
            #expect(try await device.closeCode() == 4002)

            // Granted with the CLI: bob reaches the device from node 1.
            let granted = try await CommandLineTests.relay(["device", "grant", "robot-2", "--owner", "bob", "--database-url", url])
            #expect(granted.status == 0, "\(granted.stderr)")
            let bob = try await fleet.client(1).app("bob")
            let sessionID = try await fleet.client(1).openSession(app: bob, device: again, deviceID: "robot-2")
            try bob.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer"])
            let lastSeq = try #require(try await again.next("webrtc_offer")["seq"] as? Int)

            // The device's node (it keeps the session's timers) is killed; the device resumes on
            // node 0 and bob hangs up: the audit row says so, as if nothing had happened.
            // (Written in full by the device's node, which keeps the session, with the offer it
            // delivered.)
            try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")
            try await fleet.inboxIsEmpty()
            await fleet.nodes[2].killed()
            #expect(try await RestartTests.next("peer_status", on: bob)["status"] as? String == "reconnecting")
            let resumed = try await fleet.client(0).device("robot-2", secret: newSecret, resume: try ProcessClient.Resume(again.hello, lastSeq: lastSeq))
            #expect(resumed.hello["resumed"] as? Bool == true)
            try bob.send(["type": "webrtc_close", "session_id": sessionID])
            #expect(try await RestartTests.next("webrtc_close", on: resumed)["by"] as? String == "app")
            let audited = try await eventually("the call's audit row") { () -> String? in
                let row = try await fleet.server.sql(
                    "SELECT user_id || ' ' || device_id || ' ' || close_reason || ' ' || closed_by FROM relay_session_audit WHERE session_id = '\(sessionID)'",
                    database: fleet.database
                )
                return row.isEmpty ? nil : row
            }
            #expect(audited == "bob robot-2 normal app")
        }
    }
}

extension TestSocket {
    /// The `seq` of the `pong` that answers a `ping`: everything pending before it is read (and skipped).
    func expectNothingPendingSeq() async throws -> Int? {
        try send(["type": "ping"])
        var last: Int?
        while true {
            let message = try await next()
            last = message["seq"] as? Int ?? last
            if message["type"] as? String == "pong" { return last }
        }
    }

    /// Proves nothing but messages of `type` is pending.
    func expectNothingPendingBut(_ type: String) async throws {
        try send(["type": "ping"])
        while true {
            let message = try await next()
            if message["type"] as? String == "pong" { return }
            guard message["type"] as? String == type else { throw UnexpectedMessage(expected: "pong", received: "\(message)") }
        }
    }
}

extension FleetTests {
    @Test func aLinkTakenOverAndResumedOnANewProcessGetsWhatWasQueuedForItMeanwhile() async throws {
        // Live state written every second: the kill below loses the last messages the device had.
        let fleet = try await TestFleet.start(nodes: 2, ["RELAY_OUTBOX_FLUSH_MS": "1000"])
        defer { fleet.stop() }
        var third: RelayProcess?
        defer { third?.kill() }
        try await fleet.explaining {
            let device = try await fleet.device(on: 1)
            let app = try await fleet.client(1).app("alice")
            let opened = try await ProcessClient.session(app: app, device: device)
            let (sessionID, credentials) = (opened.id, opened.credentials)
            try await fleet.sessionRow(sessionID, holds: "ttl_seconds > 0")
            // The device processes two candidates its node has not written yet, and the node dies.
            for name in ["a1", "a2"] { try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": name]]) }
            _ = try await device.next("webrtc_ice")
            let processed = try #require(try await device.next("webrtc_ice")["seq"] as? Int)
            await fleet.nodes[1].killed()

            // The app resumes on the node that takes the links over, and sends a third.
            let resumedApp = try await fleet.client(0).app("alice", resume: .init(app.hello, lastSeq: try #require(credentials["seq"] as? Int)))
            #expect(resumedApp.hello["resumed"] as? Bool == true)
            try resumedApp.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "a3"]])
            try await resumedApp.expectNothingPending()

            // The device resumes on a node started since (the link moves there), ahead of what
            // the store had of it: it gets the third, numbered after what it processed.
            third = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: fleet.environment)
            let resumed = try await ProcessClient(port: third!.port).device(
                "robot-1",
                secret: fleet.secrets["robot-1"]!,
                resume: .init(device.hello, lastSeq: processed)
            )
            #expect(resumed.hello["resumed"] as? Bool == true)
            var missed: [JSONObject] = []
            repeat { missed.append(try await resumed.next()) } while missed.last?["type"] as? String != "webrtc_ice"
            #expect(missed.map { $0["seq"] as? Int } == (processed + 1...processed + missed.count).map { $0 }, "numbered on, without a gap")
            #expect((missed.last?["candidate"] as? JSONObject)?["candidate"] as? String == "a3")
            #expect(missed.dropLast().allSatisfy { $0["type"] as? String == "peer_status" })
        }
    }
}
