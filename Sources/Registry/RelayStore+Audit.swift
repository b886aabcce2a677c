/// The session audit log in the store: batches of events, what a killed run left open, reading it back.
import DeviceAuth
import Foundation
import GRDB
import OpenSSLCrypto

extension RelayStore {
    /// Applies a batch of events in one transaction, in order.
    public func apply(_ events: [StoreEvent]) async throws(StoreError) {
        try await run {
            try await self.pool.write { db in
                var spentNonces = false
                for event in events {
                    switch event {
                    case .sessionOpened(let sessionID, let userID, let deviceID, let at):
                        try db.cachedStatement(
                            sql: "INSERT OR IGNORE INTO session_audit (session_id, user_id, device_id, created_at_ms) VALUES (?, ?, ?, ?)"
                        ).execute(
                            arguments: [sessionID, userID, deviceID, at.unixMilliseconds]
                        )
                    case .sessionAnswered(let sessionID, let at):
                        try db.cachedStatement(sql: "UPDATE session_audit SET answered_at_ms = ? WHERE session_id = ? AND answered_at_ms IS NULL").execute(
                            arguments: [at.unixMilliseconds, sessionID]
                        )
                    case .sessionClosed(let sessionID, let at, let reason, let closedBy):
                        try db.cachedStatement(
                            sql: "UPDATE session_audit SET closed_at_ms = ?, close_reason = ?, closed_by = ? WHERE session_id = ? AND closed_at_ms IS NULL"
                        ).execute(
                            arguments: [at.unixMilliseconds, reason, closedBy, sessionID]
                        )
                    case .deviceSeen(let deviceID, let at):
                        try db.cachedStatement(sql: "UPDATE device SET last_seen_at = max(coalesce(last_seen_at, 0), ?) WHERE id = ?").execute(
                            arguments: [at.timeIntervalSince1970, deviceID]
                        )
                    case .nonceSpent(let deviceID, let nonce, let expiresAt):
                        spentNonces = true
                        try db.cachedStatement(sql: "INSERT OR IGNORE INTO device_nonce (device_id, nonce, expires_at) VALUES (?, ?, ?)").execute(
                            arguments: [deviceID, nonce, expiresAt]
                        )
                    }
                }
                if spentNonces {
                    // Nonces whose signatures are dead anyway are forgotten as new ones come.
                    try db.cachedStatement(sql: "DELETE FROM device_nonce WHERE expires_at < ?").execute(
                        arguments: [Int(Date().timeIntervalSince1970)]
                    )
                }
            }
        }
    }

    /// Device nonces spent and still live at `now` (Unix seconds), for a relay starting up.
    public func liveNonces(now: Int) throws(StoreError) -> [(deviceID: String, nonce: String, expiresAt: Int)] {
        try run {
            try pool.read { db in
                try Row.fetchAll(db, sql: "SELECT device_id, nonce, expires_at FROM device_nonce WHERE expires_at >= ?", arguments: [now]).map {
                    (deviceID: $0["device_id"], nonce: $0["nonce"], expiresAt: $0["expires_at"])
                }
            }
        }
    }

    /// Sessions a previous run left open and did not keep live for the next one (a relay
    /// killed before it wrote them): closed as `relay_stopped`, with no close time, since when
    /// they ended is unknown. Only `relay serve` calls this, at start, after taking the live
    /// sessions over.
    @discardableResult
    public func closeSessionsLeftOpen() throws(StoreError) -> Int {
        try run {
            try pool.write { db in
                try db.execute(
                    sql: """
                        UPDATE session_audit SET close_reason = 'relay_stopped', closed_by = 'relay'
                        WHERE close_reason IS NULL AND session_id NOT IN (SELECT id FROM live_session)
                        """
                )
                return db.changesCount
            }
        }
    }

    /// Audit rows, newest first.
    public func auditLog(_ query: AuditQuery) async throws(StoreError) -> [AuditEntry] {
        var conditions: [String] = []
        var arguments: StatementArguments = []
        if let deviceID = query.deviceID {
            conditions.append("device_id = ?")
            arguments += [deviceID]
        }
        if let userID = query.userID {
            conditions.append("user_id = ?")
            arguments += [userID]
        }
        if let since = query.since {
            conditions.append("created_at_ms >= ?")
            arguments += [since.unixMilliseconds]
        }
        if let until = query.until {
            conditions.append("created_at_ms < ?")
            arguments += [until.unixMilliseconds]
        }
        if let after = query.after {
            conditions.append("(created_at_ms < ? OR (created_at_ms = ? AND session_id < ?))")
            arguments += [after.createdAtMilliseconds, after.createdAtMilliseconds, after.sessionID]
        }
        arguments += [query.limit]
        let filter = conditions.isEmpty ? "" : "WHERE " + conditions.joined(separator: " AND ")
        let sql = "SELECT * FROM session_audit \(filter) ORDER BY created_at_ms DESC, session_id DESC LIMIT ?"
        let bound = arguments
        return try await run {
            try await self.pool.read { db in
                try Row.fetchAll(db, sql: sql, arguments: bound).map { row in
                    AuditEntry(
                        sessionID: row["session_id"],
                        userID: row["user_id"],
                        deviceID: row["device_id"],
                        createdAt: Date(unixMilliseconds: row["created_at_ms"]),
                        answeredAt: (row["answered_at_ms"] as Int64?).map(Date.init(unixMilliseconds:)),
                        closedAt: (row["closed_at_ms"] as Int64?).map(Date.init(unixMilliseconds:)),
                        closeReason: row["close_reason"],
                        closedBy: row["closed_by"]
                    )
                }
            }
        }
    }

    public func pruneAudit(createdBefore time: Date) async throws(StoreError) -> Int {
        try await run {
            try await self.pool.write { db in
                try db.execute(sql: "DELETE FROM session_audit WHERE created_at_ms < ?", arguments: [time.unixMilliseconds])
                return db.changesCount
            }
        }
    }
}
