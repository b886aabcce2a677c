/// The registry, audit log and nonces on a real (private) PostgreSQL: what `relay device` and every node of a fleet read and write.
import DeviceAuth
import Foundation
import HTTPTypes
import HummingbirdTesting
import Logging
import NIOCore
@testable import PostgresStore
import Registry
import RelayTestSupport
import Testing

@Suite(.timeLimit(.minutes(2))) struct PostgresStoreTests {
    /// A migrated store on a fresh database of the tests' PostgreSQL, its pool running for `body`.
    static func withStore<T: Sendable>(_ body: (PostgresStore, String) async throws -> T) async throws -> T {
        let url = try await PostgresServer.running().createDatabase()
        let store = try PostgresStore(url: url, logger: Logger(label: "test-postgres"))
        return try await store.whileRunning {
            try await store.migrate()
            return try await body(store, url)
        }
    }

    @Test func theRegistryKeepsDevicesOwnersRotationsAndRevocations() async throws {
        try await Self.withStore { store, _ in
            let (added, secret) = try await store.addDevice("robot-1", owners: ["alice", "bob"], label: "lab", now: Date(timeIntervalSince1970: 1000))
            #expect(added.secrets == [secret] && added.owners == ["alice", "bob"] && added.label == "lab" && !added.revoked)
            await #expect(throws: StoreError.deviceExists("robot-1")) { try await store.addDevice("robot-1", owners: [], label: "", now: Date()) }
            await #expect(throws: StoreError.invalidDeviceID("no spaces")) { try await store.addDevice("no spaces", owners: [], label: "", now: Date()) }

            let rotated = try await store.rotate("robot-1")
            #expect(try await store.device("robot-1")?.secrets == [rotated, secret])
            try await store.dropPreviousSecret("robot-1")
            #expect(try await store.device("robot-1")?.secrets == [rotated])
            await #expect(throws: StoreError.unknownDevice("robot-9")) { try await store.rotate("robot-9") }

            _ = try await store.addDevice("robot-2", owners: [], label: "", now: Date())
            #expect(try await store.grant("robot-2", owner: "alice").owners == ["alice"])
            #expect(try await store.devices(ownedBy: "alice").map(\.deviceID) == ["robot-1", "robot-2"])
            #expect(try await store.devices(["robot-2", "robot-9"]).map(\.deviceID) == ["robot-2"])

            let revoked = try await store.revoke("robot-1", now: Date(timeIntervalSince1970: 2000))
            #expect(revoked?.revokedAt == Date(timeIntervalSince1970: 2000))
            // A second revocation keeps the first time; a revoked device is no one's to reach.
            #expect(try await store.revoke("robot-1", now: Date(timeIntervalSince1970: 3000))?.revokedAt == Date(timeIntervalSince1970: 2000))
            #expect(try await store.devices(ownedBy: "alice").map(\.deviceID) == ["robot-2"])
            #expect(try await store.revocations(after: 1500).map(\.deviceID) == ["robot-1"])
            #expect(try await store.latestRevocation() == 2000)
            #expect(try await store.device("robot-1")?.revoked == true)
            #expect(try await store.devices().count == 2)

            // A revoked device gets no new secret; unrevoked it connects with the one it had.
            await #expect(throws: StoreError.deviceRevoked("robot-1")) { try await store.rotate("robot-1") }
            await #expect(throws: StoreError.deviceNotRevoked("robot-2")) { try await store.deleteDevice("robot-2") }
            let restored = try await store.unrevoke("robot-1")
            #expect(!restored.revoked && restored.secrets == [rotated])
            #expect(try await store.ungrant("robot-1", owner: "bob").owners == ["alice"])
            _ = try await store.revoke("robot-1", now: Date())
            try await store.deleteDevice("robot-1")
            #expect(try await store.device("robot-1") == nil)
            #expect(try await store.devices().map(\.deviceID) == ["robot-2"])
            await #expect(throws: StoreError.unknownDevice("robot-1")) { try await store.unrevoke("robot-1") }
        }
    }

    @Test func auditEventsAndSpentNoncesAreKept() async throws {
        try await Self.withStore { store, _ in
            _ = try await store.addDevice("robot-1", owners: ["alice"], label: "", now: Date())
            let now = Int(Date().timeIntervalSince1970)
            try await store.apply([
                .sessionOpened(sessionID: "s1", userID: "alice", deviceID: "robot-1", at: Date(timeIntervalSince1970: 10)),
                .sessionAnswered(sessionID: "s1", at: Date(timeIntervalSince1970: 11)),
                .sessionClosed(sessionID: "s1", at: Date(timeIntervalSince1970: 12), reason: "normal", closedBy: "app"),
                .sessionClosed(sessionID: "s1", at: Date(timeIntervalSince1970: 13), reason: "admin", closedBy: "relay"),
                .deviceSeen(deviceID: "robot-1", at: Date(timeIntervalSince1970: 14)),
                .nonceSpent(deviceID: "robot-1", nonce: "n1", expiresAt: now + 300),
                .nonceSpent(deviceID: "robot-1", nonce: "old", expiresAt: now - 1),
            ])
            let row = try #require(try await store.auditLog(deviceID: "robot-1", limit: 10).first)
            #expect(row.sessionID == "s1" && row.answeredAt == Date(timeIntervalSince1970: 11))
            #expect(row.closeReason == "normal" && row.closedBy == "app" && row.closedAt == Date(timeIntervalSince1970: 12))
            #expect(try await store.device(entry: "robot-1")?.lastSeenAt == Date(timeIntervalSince1970: 14))
            #expect(try await store.liveNonces(now: now).map(\.nonce) == ["n1"])
        }
    }

    @Test func theAuditLogPagesFiltersAndPrunes() async throws {
        try await Self.withStore { store, _ in
            var events: [StoreEvent] = []
            for (index, (user, device)) in [("alice", "robot-1"), ("bob", "robot-1"), ("alice", "robot-2"), ("bob", "robot-2")].enumerated() {
                events.append(.sessionOpened(sessionID: "s\(index + 1)", userID: user, deviceID: device, at: Date(timeIntervalSince1970: Double(1000 * (index + 1)) + 0.25)))
            }
            // Two sessions at the same instant: the session id orders them.
            events.append(.sessionOpened(sessionID: "s5", userID: "carol", deviceID: "robot-2", at: Date(timeIntervalSince1970: 4000.25)))
            try await store.apply(events)
            let first = try await store.auditLog(AuditQuery(limit: 2))
            #expect(first.map(\.sessionID) == ["s5", "s4"])
            let cursor = AuditQuery.Cursor(createdAtMilliseconds: first[1].createdAt.unixMilliseconds, sessionID: first[1].sessionID)
            #expect(try await store.auditLog(AuditQuery(after: cursor, limit: 2)).map(\.sessionID) == ["s3", "s2"])
            #expect(try await store.auditLog(AuditQuery(userID: "alice")).map(\.sessionID) == ["s3", "s1"])
            #expect(try await store.auditLog(AuditQuery(deviceID: "robot-1", since: Date(timeIntervalSince1970: 1500))).map(\.sessionID) == ["s2"])
            #expect(try await store.auditLog(AuditQuery(until: Date(timeIntervalSince1970: 2000.25))).map(\.sessionID) == ["s1"])
            #expect(try await store.pruneAudit(createdBefore: Date(timeIntervalSince1970: 2500)) == 2)
            #expect(try await store.auditLog(AuditQuery()).map(\.sessionID) == ["s5", "s4", "s3"])
        }
    }

    /// A fleet's database from before audit times were integer milliseconds (schema v5, times in
    /// float seconds) keeps its entries, to the millisecond, when a node of this version migrates it.
    @Test func auditTimesInSecondsBecomeMillisecondsWhenTheSchemaIsMigrated() async throws {
        let url = try await PostgresServer.running().createDatabase()
        let store = try PostgresStore(url: url, logger: Logger(label: "test-postgres"))
        try await store.whileRunning {
            try await store.migrate(through: 5)
            let database = String(url.split(separator: "/").last!)
            _ = try await PostgresServer.running().sql(
                """
                INSERT INTO relay_session_audit (session_id, user_id, device_id, created_at, answered_at, closed_at, close_reason, closed_by)
                VALUES ('old-1', 'alice', 'robot-1', 1764000000.1234, 1764000001.5, NULL, NULL, NULL),
                       ('old-2', 'bob', 'robot-1', 1764000100.9996, NULL, 1764000200.25, 'normal', 'app')
                """,
                database: database
            )
            try await store.migrate()
            let entries = try await store.auditLog(AuditQuery())
            #expect(entries.map(\.sessionID) == ["old-2", "old-1"])
            #expect(entries.map(\.createdAt.unixMilliseconds) == [1_764_000_101_000, 1_764_000_000_123])
            #expect(entries[1].answeredAt?.unixMilliseconds == 1_764_000_001_500 && entries[1].closedAt == nil)
            #expect(entries[0].closedAt?.unixMilliseconds == 1_764_000_200_250 && entries[0].closeReason == "normal")
            let columns = try await PostgresServer.running().sql(
                "SELECT string_agg(column_name || ' ' || data_type, ', ' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'relay_session_audit' AND column_name LIKE '%_at_ms'",
                database: database
            )
            #expect(columns == "answered_at_ms bigint, closed_at_ms bigint, created_at_ms bigint")
        }
    }

    @Test func aDatabaseThatDoesNotAnswerIsAnErrorWithinTheDeadline() async throws {
        // Nothing listens on this port: the call fails, it does not hang.
        let store = try PostgresStore(url: "postgres://relay@127.0.0.1:9/none", callTimeout: .seconds(2), logger: Logger(label: "test-postgres"))
        try await store.whileRunning {
            let start = ContinuousClock.now
            await #expect(throws: StoreError.self) { try await store.check(within: .seconds(2)) }
            #expect(ContinuousClock.now - start < .seconds(5))
        }
    }
}

/// `relay serve` and `relay device` on the same PostgreSQL database, as an operator runs them.
@Suite(.timeLimit(.minutes(2))) struct PostgresRelayTests {
    @Test func theDeviceCommandsAndTheRelayShareTheDatabase() async throws {
        let url = try await PostgresServer.running().createDatabase()
        let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DATABASE_URL": url]
        let added = try await CommandLineTests.relay(["device", "add", "robot-7", "--owner", "alice", "--json"], environment: environment)
        #expect(added.status == 0, "\(added.stderr)")
        let secret = try #require((try JSONSerialization.jsonObject(with: Data(added.stdout.utf8)) as? [String: Any])?["secret"] as? String)
        let listed = try await CommandLineTests.relay(["device", "list"], environment: environment)
        #expect(listed.stdout.contains("robot-7") && listed.stdout.contains("alice"))

        let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment.merging(["RELAY_REGISTRY_POLL_MS": "100"]) { $1 })
        defer { relay.kill() }
        let client = ProcessClient(port: relay.port)
        let device = try await client.device("robot-7", secret: secret)
        let app = try await client.app("alice")
        _ = try await client.openSession(app: app, device: device, deviceID: "robot-7")

        // A revocation from the command line reaches the running relay through the database.
        let revoked = try await CommandLineTests.relay(["device", "revoke", "robot-7"], environment: environment)
        #expect(revoked.status == 0, "\(revoked.stderr)")
        #expect(try await Self.next("webrtc_close", on: app)["reason"] as? String == "device_revoked")
        #expect(try await device.closeCode() == 1008)
    }

    /// Issue "The edge, third round", 5: with PostgreSQL hanging (its processes stopped: open
    /// connections stay, nothing answers), `/readyz` still answers within a second, 503 with the
    /// store as the reason, and 200 once it answers again; `/healthz` stays 200.
    @Test func readinessAnswersWithinASecondWhilePostgreSQLHangs() async throws {
        let server = try await PostgresServer.startPrivate()
        do {
            let url = try await server.createDatabase()
            let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DATABASE_URL": url]
            let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            // A probe's own timeout (Kubernetes' default is 1 s), with a little room for the loopback.
            let probe = TestClient(host: "127.0.0.1", port: relay.port, configuration: .init(timeout: .milliseconds(1500)))
            probe.connect()
            #expect(try await probe.get("/readyz").status == .ok)
            server.freeze()
            for _ in 0..<3 {
                let ready = try await probe.get("/readyz")
                #expect(ready.status == .serviceUnavailable)
                #expect(String(buffer: ready.body ?? ByteBuffer()).contains("store"), "\(String(buffer: ready.body ?? ByteBuffer()))")
                #expect(try await probe.get("/healthz").status == .ok)
            }
            server.thaw()
            _ = try await eventually("the relay to be ready again", timeout: .seconds(30)) {
                try await probe.get("/readyz").status == .ok ? true : nil
            }
            #expect(relay.process.isRunning)
            try? await probe.shutdown()
        } catch {
            server.thaw()
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    @Test func whilePostgreSQLIsDownCallsKeepRelayingNewDevicesWaitAndEverythingResumesAfter() async throws {
        // A server of its own: this test stops it.
        let server = try await PostgresServer.startPrivate()
        do {
            let url = try await server.createDatabase()
            let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DATABASE_URL": url]
            let registry = try PostgresStore(url: url, role: "relay-test", logger: Logger(label: "relay-test"))
            let (first, second) = try await registry.whileRunning {
                try await registry.migrate()
                return (
                    try await registry.addDevice("robot-1", owners: ["alice"], label: "", now: Date()).secret,
                    try await registry.addDevice("robot-2", owners: ["alice"], label: "", now: Date()).secret
                )
            }
            let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let client = ProcessClient(port: relay.port)
            let device = try await client.device("robot-1", secret: first)
            let app = try await client.app("alice")
            let sessionID = try await client.openSession(app: app, device: device, deviceID: "robot-1")

            try await server.stop()
            // The call on this node goes on: it never needed the database.
            try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "offer-1"])
            #expect(try await device.next("webrtc_offer")["sdp"] as? String == "offer-1")
            try device.send(["type": "webrtc_answer", "session_id": sessionID, "sdp": "answer-1"])
            #expect(try await app.next("webrtc_answer")["sdp"] as? String == "answer-1")
            // Alive, not ready; a device the registry must vouch for is told to come back.
            let http = HTTPClient(port: relay.port)
            #expect(try await http.client.get("/healthz").status == .ok)
            let ready = try await http.client.get("/readyz")
            #expect(ready.status == .serviceUnavailable)
            #expect(String(buffer: ready.body ?? ByteBuffer()).contains("store"))
            let upgrade = try RawConnection.open(port: relay.port)
            let query = DeviceSignature.sign(deviceID: "robot-2", timestamp: Int(Date().timeIntervalSince1970), nonce: DeviceSignature.makeNonce(), secret: second).query
            let refused = try await upgrade.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(query)"))
            #expect(refused.hasPrefix("HTTP/1.1 503"), "\(refused)")

            try await server.start()
            // Back: ready again, new devices connect, and nothing exited.
            do {
                _ = try await eventually("the relay to be ready again", timeout: .seconds(30)) {
                    try await http.client.get("/readyz").status == .ok ? true : nil
                }
            } catch {
                let ready = try? await http.client.get("/readyz")
                Issue.record("\(String(buffer: ready?.body ?? ByteBuffer()))\n\(relay.recentLog.suffix(6000))")
                throw error
            }
            let later = try await client.device("robot-2", secret: second)
            #expect(later.hello["resumed"] as? Bool == false)
            #expect(relay.process.isRunning)
            try app.send(["type": "webrtc_close", "session_id": sessionID])
            #expect(try await device.next("webrtc_close")["reason"] as? String == "normal")
            await http.shutdown()
        } catch {
            await server.shutdown()
            throw error
        }
        await server.shutdown()
    }

    @Test func aNodeCutOffFromItsDatabaseTakesItsLockAgainOrStopsWhenTheFleetDeclaredItDead() async throws {
        let server = try await PostgresServer.running()
        let url = try await server.createDatabase()
        let database = String(url.split(separator: "/").last!)
        let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DATABASE_URL": url]
        let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
        defer { relay.kill() }
        let holders = "SELECT count(*) FROM pg_locks l JOIN pg_database d ON d.oid = l.database WHERE l.locktype = 'advisory' AND l.granted AND d.datname = '\(database)'"
        let lockBackend = "SELECT pid FROM pg_stat_activity WHERE application_name LIKE 'relay-node-%' AND datname = '\(database)'"
        let first = try await server.sql(lockBackend, database: database)

        // Its connection is cut: the node connects again, takes its lock again and serves on.
        try await server.sql("SELECT pg_terminate_backend(pid) FROM (\(lockBackend)) AS b", database: database)
        _ = try await eventually("the relay to hold its lock again") { () -> Bool? in
            let backend = try await server.sql(lockBackend, database: database)
            let held = try await server.sql(holders, database: database)
            return !backend.isEmpty && backend != first && held == "1" ? true : nil
        }
        #expect(try await server.sql("SELECT state FROM relay_node", database: database) == "serving")
        #expect(relay.process.isRunning)

        // Cut again, and meanwhile the fleet declared it dead (as a node that took its links
        // would): it has lost its links, writes nothing more and stops.
        try await server.sql("UPDATE relay_node SET state = 'dead'", database: database)
        try await server.sql("SELECT pg_terminate_backend(pid) FROM (\(lockBackend)) AS b", database: database)
        let status = try await relay.process.exited(within: .seconds(20))
        #expect(status != 0)
    }

    static func next(_ type: String, on socket: TestSocket) async throws -> JSONObject {
        try await RestartTests.next(type, on: socket)
    }
}
