import DeviceAuth
import Foundation
import GRDB
import HTTPTypes
@testable import Registry
import RelayTestSupport
import Testing

/// Contract §3.3 and §9: every session ends in the audit log with who ended it and why, and a
/// relay killed mid-run leaves a store that opens cleanly with everything it committed.
@Suite(.timeLimit(.minutes(2))) struct AuditTests {
    static let adminToken = "test-admin-token-test-admin-token-0"

    /// The audit row of `sessionID` once it is closed.
    static func closedRow(_ sessionID: String, in store: RelayStore) async throws -> AuditEntry {
        try await eventually("the audit row of \(sessionID)") {
            try await store.auditLog(limit: 1000).first { $0.sessionID == sessionID && $0.closeReason != nil }
        }
    }

    @Test func sessionsThatEndEachWayAreAudited() async throws {
        let environment = ["RELAY_SETUP_TIMEOUT_S": "3", "RELAY_RESUME_GRACE_S": "0", "RELAY_ADMIN_TOKEN": Self.adminToken]
        try await TestRelay.run(environment) { relay in
            let secret = try await relay.store.addDevice("robot-7", owners: ["alice"]).secret
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(relay.deviceQuery("robot-7", secret: secret))")
            let app = try await relay.app("alice", devices: ["robot-1"])
            var expected: [(session: String, reason: String, by: String, answered: Bool)] = []

            func open() async throws -> String {
                let (credentials, _) = try await relay.openSession(app: app, device: device, deviceID: "robot-7")
                return try #require(credentials["session_id"] as? String)
            }
            func answer(_ session: String) async throws {
                try app.send(["type": "webrtc_answer", "session_id": session, "sdp": "v=0"])
                _ = try await device.next("webrtc_answer")
            }

            // The app hangs up after the call was set up.
            var session = try await open()
            try await answer(session)
            try app.send(["type": "webrtc_close", "session_id": session])
            _ = try await device.next("webrtc_close")
            _ = try await app.next("webrtc_close")
            expected.append((session, "normal", "app", true))
            // The device hangs up with its own reason.
            session = try await open()
            try await answer(session)
            try device.send(["type": "webrtc_close", "session_id": session, "reason": "battery low"])
            _ = try await app.next("webrtc_close")
            _ = try await device.next("webrtc_close")
            expected.append((session, "battery low", "device", true))
            // The device declines.
            session = try await open()
            try device.send(["type": "webrtc_reject", "session_id": session, "reason": "busy"])
            _ = try await app.next("webrtc_close")
            _ = try await device.next("webrtc_close")
            expected.append((session, "rejected", "device", false))
            // Nobody answers in time.
            session = try await open()
            #expect(try await app.next("webrtc_close")["reason"] as? String == "setup_timeout")
            _ = try await device.next("webrtc_close")
            expected.append((session, "setup_timeout", "relay", false))
            // An operator ends it.
            session = try await open()
            try await answer(session)
            #expect(try await relay.request(.delete, "/admin/sessions/\(session)", token: Self.adminToken).status == .ok)
            #expect(try await app.next("webrtc_close")["reason"] as? String == "admin")
            _ = try await device.next("webrtc_close")
            expected.append((session, "admin", "relay", true))
            // The app's link ends (no resume grace).
            let leaving = try await relay.app("alice", devices: nil)
            let (credentials, _) = try await relay.openSession(app: leaving, device: device, deviceID: "robot-7")
            session = try #require(credentials["session_id"] as? String)
            leaving.close()
            #expect(try await device.next("webrtc_close")["reason"] as? String == "peer_disconnected")
            expected.append((session, "peer_disconnected", "relay", false))
            // The device is revoked.
            session = try await open()
            #expect(try await relay.request(.delete, "/admin/devices/robot-7", token: Self.adminToken).status == .ok)
            #expect(try await app.next("webrtc_close")["reason"] as? String == "device_revoked")
            expected.append((session, "device_revoked", "relay", false))

            for (session, reason, closer, answered) in expected {
                let row = try await Self.closedRow(session, in: relay.store)
                #expect(row.closeReason == reason, "\(reason)")
                #expect(row.closedBy == closer, "\(reason)")
                #expect(row.deviceID == "robot-7")
                #expect(row.userID == "alice")
                #expect((row.answeredAt != nil) == answered, "\(reason)")
                let closedAt = try #require(row.closedAt)
                #expect(row.createdAt <= closedAt)
                if let answeredAt = row.answeredAt { #expect(row.createdAt <= answeredAt && answeredAt <= closedAt) }
            }
            #expect(try await relay.store.auditLog(deviceID: "robot-7").count == expected.count)
        }
    }

    @Test func aKilledRelayLeavesWhatItCommittedAndTheStoreOpensCleanly() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/relay.sqlite"
            let environment = [
                "RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DB": path,
                "RELAY_SHUTDOWN_DRAIN_S": "0", "RELAY_RESUME_GRACE_S": "1",
            ]
            let store = try RelayStore(path: path)
            let secret = try await store.addDevice("robot-7", owners: ["alice"]).secret
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let client = ProcessClient(port: relay.port)
            let device = try await client.device("robot-7", secret: secret)
            let app = try await client.app("alice")

            // One session ends before the kill, one is still open.
            let ended = try await client.openSession(app: app, device: device, deviceID: "robot-7")
            try app.send(["type": "webrtc_close", "session_id": ended])
            _ = try await device.next("webrtc_close")
            _ = try await app.next("webrtc_close")
            let open = try await client.openSession(app: app, device: device, deviceID: "robot-7")
            _ = try await Self.closedRow(ended, in: store)
            _ = try await eventually("the open session's row") { try await store.auditLog().first { $0.sessionID == open } }
            _ = try await eventually("the open session kept live") { try store.liveState().sessions.first { $0.id == open } }

            await relay.killed()
            #expect(try store.integrityCheck() == "ok")
            let committed = try await store.auditLog()
            #expect(committed.count == 2)
            #expect(committed.first { $0.sessionID == ended }?.closeReason == "normal")
            let unfinished = try #require(committed.first { $0.sessionID == open })
            #expect(unfinished.closeReason == nil && unfinished.closedAt == nil)
            // The device's last sighting was committed with it.
            #expect(try await store.device(entry: "robot-7")?.lastSeenAt != nil)

            // The next run takes the open session over (contract §11); nobody resumes its links
            // within the grace, so it ends as any session of a vanished party does.
            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            let takenOver = try await eventually("the session taken over to end") {
                try await store.auditLog().first { $0.sessionID == open && $0.closeReason != nil }
            }
            #expect(takenOver.closeReason == "peer_disconnected")
            #expect(takenOver.closedBy == "relay")
            #expect(takenOver.closedAt != nil)
        }
    }

    /// Five sessions: s1 (alice, robot-1) 40 days ago ... s5 (bob, robot-2) now.
    static func history(in store: RelayStore, now: Date) async throws {
        let sessions: [(id: String, user: String, device: String, daysAgo: Double)] = [
            ("s1", "alice", "robot-1", 40), ("s2", "alice", "robot-1", 3), ("s3", "bob", "robot-1", 2), ("s4", "alice", "robot-2", 1), ("s5", "bob", "robot-2", 0),
        ]
        var events: [StoreEvent] = []
        for session in sessions {
            let created = now.addingTimeInterval(-session.daysAgo * 86_400 - 0.123)
            events.append(.sessionOpened(sessionID: session.id, userID: session.user, deviceID: session.device, at: created))
            events.append(.sessionClosed(sessionID: session.id, at: created.addingTimeInterval(60), reason: "normal", closedBy: "app"))
        }
        try await store.apply(events)
    }

    @Test func operatorsPageAndFilterTheAuditLogWithPreciseTimes() async throws {
        try await TestRelay.run(["RELAY_ADMIN_TOKEN": Self.adminToken]) { relay in
            let now = Date()
            try await Self.history(in: relay.store, now: now)
            func page(_ query: String) async throws -> (ids: [String], next: String?, entries: [[String: Any]]) {
                let answer = try await relay.request(.get, "/admin/audit\(query)", token: Self.adminToken)
                #expect(answer.status == .ok)
                let entries = try #require(answer.json["entries"] as? [[String: Any]])
                return (entries.compactMap { $0["session_id"] as? String }, answer.json["next"] as? String, entries)
            }
            // Newest first, two at a time, until `next` is null.
            var seen: [String] = []
            var query = "?limit=2"
            var pages = 0
            while true {
                let result = try await page(query)
                seen += result.ids
                pages += 1
                guard let next = result.next else { break }
                query = "?limit=2&after=\(next)"
            }
            #expect(seen == ["s5", "s4", "s3", "s2", "s1"] && pages == 3)
            #expect(try await page("?device_id=robot-1").ids == ["s3", "s2", "s1"])
            #expect(try await page("?user_id=bob").ids == ["s5", "s3"])
            let since = Int64((now.timeIntervalSince1970 - 2.5 * 86_400) * 1000)
            #expect(try await page("?since=\(since)&device_id=robot-1").ids == ["s3"])
            let until = Date(timeIntervalSince1970: now.timeIntervalSince1970 - 1.5 * 86_400).formatted(.iso8601)
            #expect(try await page("?until=\(until)").ids == ["s3", "s2", "s1"])
            // Times with milliseconds, as ISO 8601.
            let entry = try #require(try await page("?user_id=bob&limit=1").entries.first)
            let created = try #require(entry["created_at"] as? String)
            #expect(created.wholeMatch(of: /\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z/) != nil)
            #expect(entry["close_reason"] as? String == "normal" && entry["closed_by"] as? String == "app")
            #expect(try await relay.request(.get, "/admin/audit?limit=0", token: Self.adminToken).status == .badRequest)
            #expect(try await relay.request(.get, "/admin/audit?since=yesterday", token: Self.adminToken).status == .badRequest)
            #expect(try await relay.request(.get, "/admin/audit?after=%25%25", token: Self.adminToken).status == .badRequest)
            #expect(try await relay.request(.get, "/admin/audit").status == .unauthorized)
        }
    }

    /// A store from before audit times were integer milliseconds (they were float seconds) keeps
    /// its entries, to the millisecond, when this version opens it.
    @Test func auditTimesInSecondsBecomeMillisecondsWhenTheStoreIsOpened() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/relay.sqlite"
            do {
                let older = try DatabaseQueue(path: path)
                try RelayStore.migrator.migrate(older, upTo: "v4: a restored link's boundary (contract §11)")
                try await older.write { db in
                    try db.execute(
                        sql: """
                            INSERT INTO session_audit (session_id, user_id, device_id, created_at, answered_at, closed_at, close_reason, closed_by)
                            VALUES ('old-1', 'alice', 'robot-1', 1764000000.1234, 1764000001.5, NULL, NULL, NULL),
                                   ('old-2', 'bob', 'robot-1', 1764000100.9996, NULL, 1764000200.25, 'normal', 'app')
                            """
                    )
                }
                try older.close()
            }
            let store = try RelayStore(path: path)
            let entries = try await store.auditLog(AuditQuery())
            #expect(entries.map(\.sessionID) == ["old-2", "old-1"])
            #expect(entries.map(\.createdAt.unixMilliseconds) == [1_764_000_101_000, 1_764_000_000_123])
            #expect(entries[1].answeredAt?.unixMilliseconds == 1_764_000_001_500 && entries[1].closedAt == nil)
            #expect(entries[0].closedAt?.unixMilliseconds == 1_764_000_200_250 && entries[0].closeReason == "normal")
            let columns = try await store.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT name, type FROM pragma_table_info('session_audit') WHERE name LIKE '%_at_ms' ORDER BY name")
                    .map { "\($0["name"] as String) \($0["type"] as String)" }
            }
            #expect(columns == ["answered_at_ms INTEGER", "closed_at_ms INTEGER", "created_at_ms INTEGER"])
        }
    }

    @Test func theAuditLogKeepsOnlyTheRetentionPeriod() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/relay.sqlite"
            let store = try RelayStore(path: path)
            try await Self.history(in: store, now: Date())
            // Kept: 7 days. The relay prunes as it starts.
            try await TestRelay.run(["RELAY_DB": path, "RELAY_AUDIT_RETENTION_DAYS": "7"]) { relay in
                let kept = try await eventually("the audit log pruned") { () async throws -> [String]? in
                    let ids = try await relay.store.auditLog().map(\.sessionID)
                    return ids.contains("s1") ? nil : ids
                }
                #expect(kept == ["s5", "s4", "s3", "s2"])
            }
        }
    }
}
