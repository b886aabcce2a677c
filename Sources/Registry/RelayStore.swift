/// The embedded SQLite store (GRDB): device registry, owners, session audit log, spent nonces, live links and sessions.
import DeviceAuth
import Foundation
import GRDB
import OpenSSLCrypto
import Synchronization

/// The embedded store (contract §9): one SQLite file in WAL mode holding the device registry
/// and the session audit log. Its calls are async (GRDB runs them on its own queues) so none
/// blocks a Swift concurrency thread. The relay reads it when a device connects and when an app asks for
/// a device it does not hold in its token; it writes to it only in batches (`StoreWriter`), never
/// on the per-message path. The `relay device` commands open the same file from another process.
public final class RelayStore: Sendable {
    let pool: DatabasePool
    public let path: String
    /// The live links' kept messages (`<path>-outbox`).
    let outbox: OutboxLog
    /// Read-only connections for lookups that must not wait (see `device(_:)`): no busy
    /// timeout, each used by one thread at a time (as many as threads that look up at once).
    private let quickReaders = (0..<4).map { _ in QuickReader() }

    private final class QuickReader: Sendable {
        let connection = Mutex<DatabaseQueue?>(nil)
    }

    /// Opens (creating when missing, readable by its owner only: it holds device secrets) and
    /// migrates the store at `path`.
    public init(path: String) throws(StoreError) {
        self.path = path
        self.outbox = OutboxLog(path: path + "-outbox")
        do {
            if !FileManager.default.fileExists(atPath: path) {
                let directory = URL(fileURLWithPath: path).deletingLastPathComponent().path
                var isDirectory: ObjCBool = false
                if !FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory) {
                    guard (try? FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)) != nil else {
                        throw StoreError("cannot create the directory \(directory) for \(path)")
                    }
                } else if !isDirectory.boolValue {
                    throw StoreError("cannot create \(path): \(directory) is not a directory")
                }
                guard FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600]) else {
                    throw StoreError("cannot create \(path)")
                }
            }
            var configuration = Configuration()
            configuration.busyMode = .timeout(5)
            configuration.label = "relay-store"
            configuration.prepareDatabase { db in
                // A committed batch survives a crash of the process and of the machine.
                try db.execute(sql: "PRAGMA synchronous = FULL")
            }
            pool = try DatabasePool(path: path, configuration: configuration)
            try Self.migrator.migrate(pool)
            var quick = Configuration()
            quick.readonly = true
            quick.busyMode = .immediateError
            quick.label = "relay-store-quick"
            for slot in quickReaders {
                let reader = try? DatabaseQueue(path: path, configuration: quick)
                slot.connection.withLock { $0 = reader }
            }
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("cannot open \(path): \(error)")
        }
    }

    /// The store's migrations, in order (tests run them part of the way to make an older store).
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1: devices, owners, session audit") { db in
            try db.execute(
                sql: """
                    CREATE TABLE device (
                        id TEXT PRIMARY KEY NOT NULL,
                        secret TEXT NOT NULL,
                        previous_secret TEXT,
                        label TEXT NOT NULL DEFAULT '',
                        revoked_at REAL,
                        created_at REAL NOT NULL,
                        last_seen_at REAL
                    );
                    CREATE TABLE device_owner (
                        device_id TEXT NOT NULL REFERENCES device(id) ON DELETE CASCADE,
                        user_id TEXT NOT NULL,
                        PRIMARY KEY (device_id, user_id)
                    ) WITHOUT ROWID;
                    CREATE INDEX device_owner_by_user ON device_owner(user_id);
                    CREATE TABLE session_audit (
                        session_id TEXT PRIMARY KEY NOT NULL,
                        user_id TEXT NOT NULL,
                        device_id TEXT NOT NULL,
                        created_at REAL NOT NULL,
                        answered_at REAL,
                        closed_at REAL,
                        close_reason TEXT,
                        closed_by TEXT
                    );
                    CREATE INDEX session_audit_by_device ON session_audit(device_id, created_at);
                    CREATE INDEX session_audit_by_user ON session_audit(user_id, created_at);
                    """
            )
        }
        migrator.registerMigration("v2: spent device nonces") { db in
            try db.execute(
                sql: """
                    CREATE TABLE device_nonce (
                        device_id TEXT NOT NULL,
                        nonce TEXT NOT NULL,
                        expires_at INTEGER NOT NULL,
                        PRIMARY KEY (device_id, nonce)
                    ) WITHOUT ROWID;
                    CREATE INDEX device_nonce_by_expiry ON device_nonce(expires_at);
                    """
            )
        }
        registerLiveStateMigration(&migrator)
        migrator.registerMigration("v5: audit times in integer milliseconds") { db in
            // SQLite cannot change a column's type: a new table, the rows copied, the old one dropped.
            try db.execute(
                sql: """
                    CREATE TABLE session_audit_ms (
                        session_id TEXT PRIMARY KEY NOT NULL,
                        user_id TEXT NOT NULL,
                        device_id TEXT NOT NULL,
                        created_at_ms INTEGER NOT NULL,
                        answered_at_ms INTEGER,
                        closed_at_ms INTEGER,
                        close_reason TEXT,
                        closed_by TEXT
                    );
                    INSERT INTO session_audit_ms
                        SELECT session_id, user_id, device_id, CAST(round(created_at * 1000) AS INTEGER),
                            CAST(round(answered_at * 1000) AS INTEGER), CAST(round(closed_at * 1000) AS INTEGER), close_reason, closed_by
                        FROM session_audit;
                    DROP TABLE session_audit;
                    ALTER TABLE session_audit_ms RENAME TO session_audit;
                    CREATE INDEX session_audit_by_device ON session_audit(device_id, created_at_ms);
                    CREATE INDEX session_audit_by_user ON session_audit(user_id, created_at_ms);
                    CREATE INDEX session_audit_by_time ON session_audit(created_at_ms);
                    """
            )
        }
        registerControlMigration(&migrator)
        return migrator
    }

    /// Throws when the store cannot be read (for `/readyz`): through the open connections, and
    /// through a fresh one, so a file deleted or replaced under the relay is noticed (the open
    /// connections would go on reading the old one).
    /// (A local file answers at once or fails: `timeout` does not apply.)
    public func check(within timeout: Duration) async throws(StoreError) {
        try await run { try await self.pool.read { db in _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM device") } }
        try await run {
            var configuration = Configuration()
            configuration.readonly = true
            let fresh = try DatabaseQueue(path: self.path, configuration: configuration)
            try await fresh.read { db in _ = try Int.fetchOne(db, sql: "SELECT count(*) FROM device") }
            try fresh.close()
        }
    }

    /// Closes the store; every later call fails.
    public func close() throws(StoreError) {
        let readers = quickReaders.compactMap { slot in
            slot.connection.withLock { reader in
                defer { reader = nil }
                return reader
            }
        }
        try run {
            for reader in readers { try reader.close() }
            try pool.close()
        }
    }

    // MARK: Devices

    /// Registers a device with a fresh secret, returned once.
    public func addDevice(
        _ deviceID: String,
        owners: [String],
        label: String = "",
        now: Date = Date()
    ) async throws(StoreError) -> (DeviceEntry, secret: String) {
        guard DeviceSignature.isValidDeviceID(deviceID) else { throw .invalidDeviceID(deviceID) }
        let secret = Self.makeSecret()
        let entry = try await run {
            try await self.pool.write { db -> DeviceEntry? in
                guard try Bool.fetchOne(db, sql: "SELECT 1 FROM device WHERE id = ?", arguments: [deviceID]) == nil else { return nil }
                try db.execute(
                    sql: "INSERT INTO device (id, secret, label, created_at) VALUES (?, ?, ?, ?)",
                    arguments: [deviceID, secret, label, now.timeIntervalSince1970]
                )
                for owner in Set(owners) {
                    try db.execute(sql: "INSERT INTO device_owner (device_id, user_id) VALUES (?, ?)", arguments: [deviceID, owner])
                }
                return try Self.entry(deviceID, in: db)
            }
        }
        guard let entry else { throw .deviceExists(deviceID) }
        return (entry, secret)
    }

    public func devices() async throws(StoreError) -> [DeviceEntry] {
        try await run { try await self.pool.read { db in try Self.entries(db, where: "", arguments: []) } }
    }

    public func device(entry deviceID: String) async throws(StoreError) -> DeviceEntry? {
        try await run { try await self.pool.read { db in try Self.entry(deviceID, in: db) } }
    }

    /// The devices `userID` owns in the registry (not revoked).
    public func devices(ownedBy userID: String) async throws(StoreError) -> [DeviceEntry] {
        try await run {
            try await self.pool.read { db in
                try Self.entries(
                    db,
                    where: "WHERE revoked_at IS NULL AND id IN (SELECT device_id FROM device_owner WHERE user_id = ?)",
                    arguments: [userID]
                )
            }
        }
    }

    /// The registry rows of `deviceIDs` (those that have one).
    public func devices(_ deviceIDs: [String]) async throws(StoreError) -> [DeviceEntry] {
        guard !deviceIDs.isEmpty else { return [] }
        return try await run {
            try await self.pool.read { db in
                let marks = Array(repeating: "?", count: deviceIDs.count).joined(separator: ",")
                return try Self.entries(db, where: "WHERE id IN (\(marks))", arguments: StatementArguments(deviceIDs))
            }
        }
    }

    /// Revokes a device; false when it was not registered. Revoking twice keeps the first time.
    @discardableResult
    public func revoke(_ deviceID: String, now: Date = Date()) async throws(StoreError) -> DeviceEntry? {
        try await run {
            try await self.pool.write { db in
                try db.execute(
                    sql: "UPDATE device SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                    arguments: [now.timeIntervalSince1970, deviceID]
                )
                return try Self.entry(deviceID, in: db)
            }
        }
    }

    /// Gives a device a new secret (returned once). The secret it replaces stays valid beside
    /// it so robots can be moved over without downtime, until `dropPreviousSecret`; a device
    /// never has more than two.
    public func rotate(_ deviceID: String) async throws(StoreError) -> String {
        let secret = Self.makeSecret()
        let revoked = try await run {
            try await self.pool.write { db -> Bool? in
                let revoked = try Self.isRevoked(deviceID, in: db)
                if revoked == false {
                    try db.execute(sql: "UPDATE device SET previous_secret = secret, secret = ? WHERE id = ?", arguments: [secret, deviceID])
                }
                return revoked
            }
        }
        guard let revoked else { throw .unknownDevice(deviceID) }
        if revoked { throw .deviceRevoked(deviceID) }
        return secret
    }

    /// Whether the device is revoked; nil when it is not registered.
    private static func isRevoked(_ deviceID: String, in db: Database) throws -> Bool? {
        try Row.fetchOne(db, sql: "SELECT revoked_at FROM device WHERE id = ?", arguments: [deviceID]).map { ($0["revoked_at"] as Double?) != nil }
    }

    public func ungrant(_ deviceID: String, owner userID: String) async throws(StoreError) -> DeviceEntry {
        let entry = try await run {
            try await self.pool.write { db -> DeviceEntry? in
                try db.execute(sql: "DELETE FROM device_owner WHERE device_id = ? AND user_id = ?", arguments: [deviceID, userID])
                return try Self.entry(deviceID, in: db)
            }
        }
        guard let entry else { throw .unknownDevice(deviceID) }
        return entry
    }

    public func unrevoke(_ deviceID: String) async throws(StoreError) -> DeviceEntry {
        let entry = try await run {
            try await self.pool.write { db -> DeviceEntry? in
                try db.execute(sql: "UPDATE device SET revoked_at = NULL WHERE id = ?", arguments: [deviceID])
                return try Self.entry(deviceID, in: db)
            }
        }
        guard let entry else { throw .unknownDevice(deviceID) }
        return entry
    }

    public func deleteDevice(_ deviceID: String) async throws(StoreError) {
        let state = try await run {
            try await self.pool.write { db -> Bool? in
                let revoked = try Self.isRevoked(deviceID, in: db)
                if revoked == true { try db.execute(sql: "DELETE FROM device WHERE id = ?", arguments: [deviceID]) }
                return revoked
            }
        }
        guard let state else { throw .unknownDevice(deviceID) }
        if !state { throw .deviceNotRevoked(deviceID) }
    }

    /// Ends a rotation: only the newest secret stays valid.
    public func dropPreviousSecret(_ deviceID: String) async throws(StoreError) {
        let updated = try await run {
            try await self.pool.write { db in
                try db.execute(sql: "UPDATE device SET previous_secret = NULL WHERE id = ?", arguments: [deviceID])
                return db.changesCount
            }
        }
        guard updated == 1 else { throw .unknownDevice(deviceID) }
    }

    /// Lets `userID` open sessions to the device.
    public func grant(_ deviceID: String, owner userID: String) async throws(StoreError) -> DeviceEntry {
        let entry = try await run {
            try await self.pool.write { db -> DeviceEntry? in
                guard try Bool.fetchOne(db, sql: "SELECT 1 FROM device WHERE id = ?", arguments: [deviceID]) != nil else { return nil }
                try db.execute(sql: "INSERT OR IGNORE INTO device_owner (device_id, user_id) VALUES (?, ?)", arguments: [deviceID, userID])
                return try Self.entry(deviceID, in: db)
            }
        }
        guard let entry else { throw .unknownDevice(deviceID) }
        return entry
    }

    /// Devices revoked after `time` (Unix seconds), with when: how a running relay learns of a
    /// revocation made by the command line in another process.
    public func revocations(after time: Double) async throws(StoreError) -> [(deviceID: String, at: Double)] {
        try await run {
            try await self.pool.read { db in
                try Row.fetchAll(db, sql: "SELECT id, revoked_at FROM device WHERE revoked_at > ? ORDER BY revoked_at", arguments: [time])
                    .map { (deviceID: $0["id"], at: $0["revoked_at"]) }
            }
        }
    }

    /// The latest revocation time in the store (0 when none).
    public func latestRevocation() async throws(StoreError) -> Double {
        try await run { try await self.pool.read { db in try Double.fetchOne(db, sql: "SELECT max(revoked_at) FROM device") ?? 0 } }
    }

    private static func entry(_ deviceID: String, in db: Database) throws -> DeviceEntry? {
        try entries(db, where: "WHERE id = ?", arguments: [deviceID]).first
    }

    private static func entries(_ db: Database, where filter: String, arguments: StatementArguments) throws -> [DeviceEntry] {
        // Cached: a device's connect reads its row, and compiling the query each time cost more
        // than running it.
        let statement = try db.cachedStatement(
            sql: """
                SELECT id, secret, previous_secret, label, revoked_at, created_at, last_seen_at,
                       (SELECT group_concat(user_id, char(10)) FROM (SELECT user_id FROM device_owner WHERE device_id = device.id ORDER BY user_id)) AS owners
                FROM device \(filter) ORDER BY id
                """
        )
        return try Row.fetchAll(statement, arguments: arguments).map { row in
            let owners: String? = row["owners"]
            let previous: String? = row["previous_secret"]
            return DeviceEntry(
                deviceID: row["id"],
                secrets: [row["secret"]] + (previous.map { [$0] } ?? []),
                owners: owners.map { $0.split(separator: "\n").map(String.init) } ?? [],
                label: row["label"],
                revokedAt: (row["revoked_at"] as Double?).map(Date.init(timeIntervalSince1970:)),
                createdAt: Date(timeIntervalSince1970: row["created_at"]),
                lastSeenAt: (row["last_seen_at"] as Double?).map(Date.init(timeIntervalSince1970:))
            )
        }
    }

    /// A new device secret: 32 random bytes as lowercase hex (whichever store keeps it).
    public static func makeSecret() -> String {
        LibCrypto.randomBytes(32).map { String(format: "%02x", $0) }.joined()
    }

    /// SQLite's own consistency check: "ok" when the file is sound.
    public func integrityCheck() throws(StoreError) -> String {
        try run { try pool.read { db in try String.fetchOne(db, sql: "PRAGMA integrity_check") ?? "" } }
    }

    // MARK: Errors

    func run<T>(_ body: () throws -> T) throws(StoreError) -> T {
        do {
            return try body()
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("store: \(error)")
        }
    }

    func run<T>(_ body: () async throws -> T) async throws(StoreError) -> T {
        do {
            return try await body()
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError("store: \(error)")
        }
    }
}

extension RelayStore: RelayRegistry, LiveStateStore {
    /// The registry's record of a device (what device authentication checks). One SELECT (its
    /// owners in a subquery) is consistent by itself: no transaction around it.
    ///
    /// A read can wait seconds on a lock (the store being migrated or checkpointed by another
    /// connection), and a Swift concurrency thread blocked that long stalls everything else
    /// scheduled on the pool. So the read is first tried on the caller's thread through a
    /// connection that never waits (no busy timeout; skipped while another thread uses it), which
    /// spares a connect the two thread switches of GRDB's queue; only when that cannot read at
    /// once does it go through GRDB's queue, which may wait.
    public func device(_ deviceID: String) async throws -> DeviceRecord? {
        if let record = quickEntry(deviceID) { return record?.record }
        return try await pool.unsafeRead { db in try Self.entry(deviceID, in: db) }.map(\.record)
    }

    /// The device's row read without waiting: nil when it could not be read at once.
    private func quickEntry(_ deviceID: String) -> DeviceEntry?? {
        for slot in quickReaders {
            let read: DeviceEntry??? = slot.connection.withLockIfAvailable { reader -> DeviceEntry?? in
                guard let reader else { return nil }
                do {
                    return .some(try reader.unsafeRead { db in try Self.entry(deviceID, in: db) })
                } catch {
                    return nil
                }
            }
            // Busy with another thread: the next one; unreadable now: GRDB's queue.
            guard let read else { continue }
            return read
        }
        return nil
    }
}
