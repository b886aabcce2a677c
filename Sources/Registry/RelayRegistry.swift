/// What the relay and its commands need of a store, whichever engine keeps it: SQLite on one node, PostgreSQL for several.
import DeviceAuth
import Foundation

/// The registry (devices, owners, secrets, revocations), the audit log and the spent device
/// nonces, as the relay and the `relay device` commands use them. `RelayStore` keeps them in the
/// embedded SQLite file; `PostgresStore` in PostgreSQL, shared by every node of a fleet.
public protocol RelayRegistry: DeviceDirectory, Sendable {
    /// Registers a device with a fresh secret, returned once.
    func addDevice(_ deviceID: String, owners: [String], label: String, now: Date) async throws(StoreError) -> (DeviceEntry, secret: String)
    /// Every registered device.
    func devices() async throws(StoreError) -> [DeviceEntry]
    /// One device's registry row.
    func device(entry deviceID: String) async throws(StoreError) -> DeviceEntry?
    /// The devices `userID` owns (not revoked).
    func devices(ownedBy userID: String) async throws(StoreError) -> [DeviceEntry]
    /// The rows of `deviceIDs` (those that have one).
    func devices(_ deviceIDs: [String]) async throws(StoreError) -> [DeviceEntry]
    /// Revokes a device (nil when unknown); a second revocation keeps the first time.
    func revoke(_ deviceID: String, now: Date) async throws(StoreError) -> DeviceEntry?
    /// A new secret beside the current one, until `dropPreviousSecret`.
    func rotate(_ deviceID: String) async throws(StoreError) -> String
    /// Ends a rotation: only the newest secret stays valid.
    func dropPreviousSecret(_ deviceID: String) async throws(StoreError)
    /// Lets `userID` open sessions to the device.
    func grant(_ deviceID: String, owner userID: String) async throws(StoreError) -> DeviceEntry
    /// Takes `userID` off the device's owners.
    func ungrant(_ deviceID: String, owner userID: String) async throws(StoreError) -> DeviceEntry
    /// Lets a revoked device connect again (with the secrets it had).
    func unrevoke(_ deviceID: String) async throws(StoreError) -> DeviceEntry
    /// Forgets a revoked device: its row, secrets and owners (its audit entries stay).
    func deleteDevice(_ deviceID: String) async throws(StoreError)
    /// Devices revoked after `time` (Unix seconds), with when.
    func revocations(after time: Double) async throws(StoreError) -> [(deviceID: String, at: Double)]
    /// The latest revocation time (0 when none).
    func latestRevocation() async throws(StoreError) -> Double
    /// Audit entries, newest first (created_at, then session id), as `query` says.
    func auditLog(_ query: AuditQuery) async throws(StoreError) -> [AuditEntry]
    /// Deletes the entries of sessions created before `time`; returns how many.
    func pruneAudit(createdBefore time: Date) async throws(StoreError) -> Int
    /// Applies a batch of recorded events in one transaction, in order.
    func apply(_ events: [StoreEvent]) async throws(StoreError)
    /// Device nonces spent and still live at `now` (Unix seconds).
    func liveNonces(now: Int) async throws(StoreError) -> [(deviceID: String, nonce: String, expiresAt: Int)]
    /// Throws when the store cannot be used (for `/readyz`).
    func check(within timeout: Duration) async throws(StoreError)
}

/// Where the relay keeps its live links, their kept messages and its open sessions, so the next
/// process (or another node) takes them over (contract §11): the SQLite file and its outbox
/// log on one node, PostgreSQL for several.
public protocol LiveStateStore: Sendable {
    /// Writes batches of changes, in order; a batch written twice changes nothing more.
    func save(_ batches: [LiveStateBatch]) async throws(StoreError)
    /// What a previous process left live (for a relay starting up).
    func liveState() async throws(StoreError) -> StoredLiveState
    /// Audits as `relay_stopped` the sessions a previous process left open in the audit log but
    /// not live (it was killed before it wrote them); how many. Called after taking over.
    func closeSessionsLeftOpen() async throws(StoreError) -> Int
    /// Bytes a snapshot of the kept messages would reclaim (0: a snapshot reclaims nothing).
    var outboxLogBytes: Int { get }
}

extension RelayRegistry {
    /// The newest `limit` entries, of one device when given.
    public func auditLog(deviceID: String? = nil, limit: Int = 100) async throws(StoreError) -> [AuditEntry] {
        try await auditLog(AuditQuery(deviceID: deviceID, limit: limit))
    }
}
