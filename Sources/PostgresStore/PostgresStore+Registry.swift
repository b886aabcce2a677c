/// The registry, the audit log and the spent nonces on PostgreSQL: the `RelayRegistry` every node of a fleet shares.
import DeviceAuth
import Foundation
import OpenSSLCrypto
import PostgresNIO
import Registry

extension PostgresStore: RelayRegistry {
    // MARK: Devices

    public func addDevice(_ deviceID: String, owners: [String], label: String, now: Date) async throws(StoreError) -> (DeviceEntry, secret: String) {
        guard DeviceSignature.isValidDeviceID(deviceID) else { throw .invalidDeviceID(deviceID) }
        let secret = RelayStore.makeSecret()
        let created = now.timeIntervalSince1970
        let entry = try await transaction("adding a device") { connection -> DeviceEntry? in
            let inserted = try await connection.query(
                "INSERT INTO relay_device (id, secret, label, created_at) VALUES (\(deviceID), \(secret), \(label), \(created)) ON CONFLICT DO NOTHING RETURNING id",
                logger: self.logger
            ).collect()
            guard !inserted.isEmpty else { return nil }
            for owner in Set(owners) {
                try await connection.query("INSERT INTO relay_device_owner (device_id, user_id) VALUES (\(deviceID), \(owner))", logger: self.logger)
            }
            return try await Self.entries(connection, deviceID: deviceID, logger: self.logger).first
        }
        guard let entry else { throw .deviceExists(deviceID) }
        return (entry, secret)
    }

    public func devices() async throws(StoreError) -> [DeviceEntry] {
        try await call("listing devices") { try await self.client.withConnection { try await Self.entries($0, logger: self.logger) } }
    }

    public func device(entry deviceID: String) async throws(StoreError) -> DeviceEntry? {
        try await call("reading a device") { try await self.client.withConnection { try await Self.entries($0, deviceID: deviceID, logger: self.logger).first } }
    }

    public func devices(ownedBy userID: String) async throws(StoreError) -> [DeviceEntry] {
        try await call("listing a user's devices") {
            try await self.client.withConnection { try await Self.entries($0, ownedBy: userID, logger: self.logger) }
        }
    }

    public func devices(_ deviceIDs: [String]) async throws(StoreError) -> [DeviceEntry] {
        guard !deviceIDs.isEmpty else { return [] }
        return try await call("reading devices") {
            try await self.client.withConnection { try await Self.entries($0, deviceIDs: deviceIDs, logger: self.logger) }
        }
    }

    public func revoke(_ deviceID: String, now: Date) async throws(StoreError) -> DeviceEntry? {
        let at = now.timeIntervalSince1970
        return try await transaction("revoking a device") { connection in
            try await connection.query("UPDATE relay_device SET revoked_at = \(at) WHERE id = \(deviceID) AND revoked_at IS NULL", logger: self.logger)
            return try await Self.entries(connection, deviceID: deviceID, logger: self.logger).first
        }
    }

    public func rotate(_ deviceID: String) async throws(StoreError) -> String {
        let secret = RelayStore.makeSecret()
        let revoked = try await transaction("rotating a secret") { connection -> Bool? in
            let revoked = try await Self.isRevoked(deviceID, connection, logger: self.logger)
            if revoked == false {
                try await connection.query(
                    "UPDATE relay_device SET previous_secret = secret, secret = \(secret) WHERE id = \(deviceID)",
                    logger: self.logger
                )
            }
            return revoked
        }
        guard let revoked else { throw .unknownDevice(deviceID) }
        if revoked { throw .deviceRevoked(deviceID) }
        return secret
    }

    /// Whether the device is revoked (its row locked for the rest of the transaction); nil when
    /// it is not registered.
    private static func isRevoked(_ deviceID: String, _ connection: PostgresConnection, logger: Logger) async throws -> Bool? {
        let rows = try await connection.query("SELECT revoked_at FROM relay_device WHERE id = \(deviceID) FOR UPDATE", logger: logger)
        var revoked: Bool?
        for try await revokedAt in rows.decode(Double?.self) { revoked = revokedAt != nil }
        return revoked
    }

    public func ungrant(_ deviceID: String, owner userID: String) async throws(StoreError) -> DeviceEntry {
        let entry = try await transaction("taking an owner off a device") { connection -> DeviceEntry? in
            try await connection.query("DELETE FROM relay_device_owner WHERE device_id = \(deviceID) AND user_id = \(userID)", logger: self.logger)
            return try await Self.entries(connection, deviceID: deviceID, logger: self.logger).first
        }
        guard let entry else { throw .unknownDevice(deviceID) }
        return entry
    }

    public func unrevoke(_ deviceID: String) async throws(StoreError) -> DeviceEntry {
        let entry = try await transaction("unrevoking a device") { connection -> DeviceEntry? in
            try await connection.query("UPDATE relay_device SET revoked_at = NULL WHERE id = \(deviceID)", logger: self.logger)
            return try await Self.entries(connection, deviceID: deviceID, logger: self.logger).first
        }
        guard let entry else { throw .unknownDevice(deviceID) }
        return entry
    }

    public func deleteDevice(_ deviceID: String) async throws(StoreError) {
        let state = try await transaction("deleting a device") { connection -> Bool? in
            let revoked = try await Self.isRevoked(deviceID, connection, logger: self.logger)
            if revoked == true { try await connection.query("DELETE FROM relay_device WHERE id = \(deviceID)", logger: self.logger) }
            return revoked
        }
        guard let state else { throw .unknownDevice(deviceID) }
        if !state { throw .deviceNotRevoked(deviceID) }
    }

    public func dropPreviousSecret(_ deviceID: String) async throws(StoreError) {
        let updated = try await call("ending a rotation") {
            try await self.client.query("UPDATE relay_device SET previous_secret = NULL WHERE id = \(deviceID) RETURNING id", logger: self.logger)
                .collect().count
        }
        guard updated == 1 else { throw .unknownDevice(deviceID) }
    }

    public func grant(_ deviceID: String, owner userID: String) async throws(StoreError) -> DeviceEntry {
        let entry = try await transaction("granting a device") { connection -> DeviceEntry? in
            try await connection.query(
                "INSERT INTO relay_device_owner (device_id, user_id) SELECT id, \(userID) FROM relay_device WHERE id = \(deviceID) ON CONFLICT DO NOTHING",
                logger: self.logger
            )
            return try await Self.entries(connection, deviceID: deviceID, logger: self.logger).first
        }
        guard let entry else { throw .unknownDevice(deviceID) }
        return entry
    }

    public func revocations(after time: Double) async throws(StoreError) -> [(deviceID: String, at: Double)] {
        try await call("reading revocations") {
            var revoked: [(deviceID: String, at: Double)] = []
            let rows = try await self.client.query(
                "SELECT id, revoked_at FROM relay_device WHERE revoked_at > \(time) ORDER BY revoked_at",
                logger: self.logger
            )
            for try await (id, at) in rows.decode((String, Double).self) { revoked.append((id, at)) }
            return revoked
        }
    }

    public func latestRevocation() async throws(StoreError) -> Double {
        try await call("reading revocations") {
            var latest = 0.0
            for try await at in try await self.client.query("SELECT coalesce(max(revoked_at), 0) FROM relay_device", logger: self.logger).decode(Double.self) {
                latest = at
            }
            return latest
        }
    }

    /// The registry's record of a device (what device authentication checks).
    public func device(_ deviceID: String) async throws -> DeviceRecord? {
        try await device(entry: deviceID)?.record
    }

    private static func entries(
        _ connection: PostgresConnection,
        deviceID: String? = nil,
        deviceIDs: [String]? = nil,
        ownedBy userID: String? = nil,
        logger: Logger
    ) async throws -> [DeviceEntry] {
        let rows = try await connection.query(
            """
            SELECT id, secret, previous_secret, label, revoked_at, created_at, last_seen_at,
                   coalesce((SELECT array_agg(user_id ORDER BY user_id) FROM relay_device_owner WHERE device_id = relay_device.id), '{}') AS owners
            FROM relay_device
            WHERE (\(deviceID)::text IS NULL OR id = \(deviceID))
              AND (\(deviceIDs)::text[] IS NULL OR id = ANY(\(deviceIDs)))
              AND (\(userID)::text IS NULL OR (revoked_at IS NULL AND id IN (SELECT device_id FROM relay_device_owner WHERE user_id = \(userID))))
            ORDER BY id
            """,
            logger: logger
        )
        var entries: [DeviceEntry] = []
        for try await (id, secret, previous, label, revokedAt, createdAt, lastSeenAt, owners) in rows.decode(
            (String, String, String?, String, Double?, Double, Double?, [String]).self
        ) {
            entries.append(
                DeviceEntry(
                    deviceID: id,
                    secrets: [secret] + (previous.map { [$0] } ?? []),
                    owners: owners,
                    label: label,
                    revokedAt: revokedAt.map(Date.init(timeIntervalSince1970:)),
                    createdAt: Date(timeIntervalSince1970: createdAt),
                    lastSeenAt: lastSeenAt.map(Date.init(timeIntervalSince1970:))
                )
            )
        }
        return entries
    }

    // MARK: Audit log and nonces

    public func apply(_ events: [StoreEvent]) async throws(StoreError) {
        guard !events.isEmpty else { return }
        try await transaction("writing audit events") { connection in
            var spentNonces = false
            for event in events {
                switch event {
                case .sessionOpened(let sessionID, let userID, let deviceID, let at):
                    let created = at.unixMilliseconds
                    try await connection.query(
                        """
                        INSERT INTO relay_session_audit (session_id, user_id, device_id, created_at_ms) VALUES (\(sessionID), \(userID), \(deviceID), \(created))
                        ON CONFLICT DO NOTHING
                        """,
                        logger: self.logger
                    )
                case .sessionAnswered(let sessionID, let at):
                    let answered = at.unixMilliseconds
                    try await connection.query(
                        "UPDATE relay_session_audit SET answered_at_ms = \(answered) WHERE session_id = \(sessionID) AND answered_at_ms IS NULL",
                        logger: self.logger
                    )
                case .sessionClosed(let sessionID, let at, let reason, let closedBy):
                    let closed = at.unixMilliseconds
                    try await connection.query(
                        """
                        UPDATE relay_session_audit SET closed_at_ms = \(closed), close_reason = \(reason), closed_by = \(closedBy)
                        WHERE session_id = \(sessionID) AND closed_at_ms IS NULL
                        """,
                        logger: self.logger
                    )
                case .deviceSeen(let deviceID, let at):
                    let seen = at.timeIntervalSince1970
                    try await connection.query(
                        "UPDATE relay_device SET last_seen_at = greatest(coalesce(last_seen_at, 0), \(seen)) WHERE id = \(deviceID)",
                        logger: self.logger
                    )
                case .nonceSpent(let deviceID, let nonce, let expiresAt):
                    spentNonces = true
                    try await connection.query(
                        "INSERT INTO relay_nonce (device_id, nonce, expires_at) VALUES (\(deviceID), \(nonce), \(expiresAt)) ON CONFLICT DO NOTHING",
                        logger: self.logger
                    )
                }
            }
            if spentNonces {
                let now = Int(Date().timeIntervalSince1970)
                try await connection.query("DELETE FROM relay_nonce WHERE expires_at < \(now)", logger: self.logger)
            }
        }
    }

    public func liveNonces(now: Int) async throws(StoreError) -> [(deviceID: String, nonce: String, expiresAt: Int)] {
        try await call("reading nonces") {
            var nonces: [(deviceID: String, nonce: String, expiresAt: Int)] = []
            let rows = try await self.client.query("SELECT device_id, nonce, expires_at FROM relay_nonce WHERE expires_at >= \(now)", logger: self.logger)
            for try await (device, nonce, expires) in rows.decode((String, String, Int).self) { nonces.append((device, nonce, expires)) }
            return nonces
        }
    }

    public func pruneAudit(createdBefore time: Date) async throws(StoreError) -> Int {
        let before = time.unixMilliseconds
        return try await call("pruning the audit log") {
            try await self.client.query("DELETE FROM relay_session_audit WHERE created_at_ms < \(before) RETURNING 1", logger: self.logger).collect().count
        }
    }

    public func auditLog(_ query: AuditQuery) async throws(StoreError) -> [AuditEntry] {
        let since = query.since?.unixMilliseconds
        let until = query.until?.unixMilliseconds
        let afterTime = query.after?.createdAtMilliseconds
        let afterSession = query.after?.sessionID ?? ""
        return try await call("reading the audit log") {
            let rows = try await self.client.query(
                """
                SELECT session_id, user_id, device_id, created_at_ms, answered_at_ms, closed_at_ms, close_reason, closed_by FROM relay_session_audit
                WHERE (\(query.deviceID)::text IS NULL OR device_id = \(query.deviceID))
                AND (\(query.userID)::text IS NULL OR user_id = \(query.userID))
                AND (\(since)::int8 IS NULL OR created_at_ms >= \(since))
                AND (\(until)::int8 IS NULL OR created_at_ms < \(until))
                AND (\(afterTime)::int8 IS NULL OR created_at_ms < \(afterTime) OR (created_at_ms = \(afterTime) AND session_id < \(afterSession)))
                ORDER BY created_at_ms DESC, session_id DESC LIMIT \(query.limit)
                """,
                logger: self.logger
            )
            var entries: [AuditEntry] = []
            for try await (session, user, device, created, answered, closed, reason, by) in rows.decode(
                (String, String, String, Int64, Int64?, Int64?, String?, String?).self
            ) {
                entries.append(
                    AuditEntry(
                        sessionID: session,
                        userID: user,
                        deviceID: device,
                        createdAt: Date(unixMilliseconds: created),
                        answeredAt: answered.map(Date.init(unixMilliseconds:)),
                        closedAt: closed.map(Date.init(unixMilliseconds:)),
                        closeReason: reason,
                        closedBy: by
                    )
                )
            }
            return entries
        }
    }

    public func check(within timeout: Duration) async throws(StoreError) {
        _ = try await call("checking the store", within: timeout) { try await self.client.query("SELECT 1", logger: self.logger).collect() }
    }
}
