/// The live links and sessions of this process: the facts in the store seam (`LocalStore`), the objects that route messages beside them.
import Foundation
import Registry
import RelayCore
import Synchronization

/// The table of live links and sessions: the one interface the rest of the relay uses to find
/// a device's link, reserve and find sessions, and forget them. The facts (which link is a
/// device's live one, which sessions exist and between whom, the capacity rule) are values in a
/// `LinkDirectory` and `SessionStore`; beside them this process keeps the `Link` and `Session`
/// objects that route messages, by id.
protocol SessionTable: Sendable {
    /// This process's node.
    var node: NodeID { get }
    /// The fleet this node is part of (nil: it runs alone).
    var fleet: Fleet? { get }
    /// Makes `link` live. For a device, returns the link it replaces, if any.
    func register(_ link: Link) -> Link?
    /// Records whether a transport serves `link` (a device then may take new sessions).
    func setAttached(_ link: Link)
    /// Forgets `link` if it is still the live one for its principal.
    func unregister(_ link: Link)
    /// The links a resume by `principal` may be for (an app user may have several).
    func links(of party: Party, principal: String) -> [Link]
    /// The live link with this id (HTTP fallback requests name their link).
    func link(id: String) -> Link?
    /// Every link (for shutdown).
    var allLinks: [Link] { get }
    /// Reserves a session between `app` and the live link of `deviceID`, within the limits
    /// (in a fleet, the device's link and the limits are the fleet's).
    func reserveSession(app: Link, deviceID: String, limits: SessionLimits, setupTimeout: Duration, requestedAt: ContinuousClock.Instant)
        async throws(StoreError) -> Result<Session, SessionRefusal>
    /// Records that a reserved session opened (its parties were told).
    func opened(_ session: Session)
    /// Takes in an open session restored from the store or opened by another node, between its
    /// links (those of this node restored); false when one of them ended meanwhile.
    func adopt(_ session: Session) -> Bool
    /// Removes a session from the table and from both parties.
    func remove(_ session: Session)
    /// The session with `id`, whoever its parties are (for operators).
    func session(_ id: String) -> Session?
    /// Every session (for operators).
    var allSessions: [Session] { get }
    /// Live links by kind and sessions, for health and metrics.
    var counts: (apps: Int, devices: Int, sessions: Int) { get }
}

/// The `SessionTable` of a relay that runs alone: the facts in a `LocalStore`, the objects in
/// hash-sharded maps (no global lock on the per-message path, which touches only the two links'
/// own state).
final class LocalSessionTable: SessionTable {
    let store: LocalStore
    let fleet: Fleet?
    private let links = ShardedMap<String, Link>()
    private let sessions = ShardedMap<String, Session>()

    init(fleet: Fleet? = nil) {
        self.store = LocalStore(node: fleet.map { NodeID(rawValue: $0.node) } ?? .local)
        self.fleet = fleet
    }

    var node: NodeID { store.node }

    func register(_ link: Link) -> Link? {
        links.update(link.id) { $0 = link }
        return store.register(link.record).flatMap { links[$0.linkID] }
    }

    func setAttached(_ link: Link) {
        link.withAttachment { store.setAttached($0, at: link.address) }
    }

    func unregister(_ link: Link) {
        store.unregister(link.address)
        links.update(link.id) { current in
            if current === link { current = nil }
        }
    }

    func link(id: String) -> Link? {
        links[id]
    }

    func links(of party: Party, principal: String) -> [Link] {
        store.links(of: party, principal: principal).compactMap { links[$0.address.linkID] }
    }

    var allLinks: [Link] { links.values }

    func reserveSession(app: Link, deviceID: String, limits: SessionLimits, setupTimeout: Duration, requestedAt: ContinuousClock.Instant)
        async throws(StoreError) -> Result<Session, SessionRefusal>
    {
        let id = Session.makeID()
        let device: any LinkEndpoint
        var deviceNode = node
        if let fleet {
            // The fleet's rule, in one transaction of the shared store.
            switch try await fleet.store.reserveSession(
                id,
                app: app.storedRecord,
                deviceID: deviceID,
                createdAt: Date().timeIntervalSince1970,
                maxPerDevice: limits.maxPerDevice,
                maxPerApp: limits.maxPerApp
            ) {
            case .deviceOffline: return .failure(.deviceOffline)
            case .deviceBusy: return .failure(.deviceBusy(limit: limits.maxPerDevice))
            case .appLimit: return .failure(.appLimit(limit: limits.maxPerApp))
            case .reserved(let link) where link.node != fleet.node:
                device = RemoteLink(id: link.linkID, principal: deviceID, outbox: fleet.outbox)
                deviceNode = NodeID(rawValue: link.node)
            case .reserved(let link):
                guard let local = links[link.linkID] else {
                    try? await fleet.store.forgetSession(id)
                    return .failure(.deviceOffline)
                }
                device = local
            }
            store.update(id) { record in
                record = SessionRecord(
                    id: id,
                    app: app.address,
                    device: LinkAddress(node: deviceNode, linkID: device.id),
                    userID: app.principal,
                    deviceID: deviceID,
                    phase: .reserved
                )
            }
        } else {
            switch store.reserve(sessionID: id, app: app.address, userID: app.principal, deviceID: deviceID, limits: limits) {
            case .failure(let refusal): return .failure(refusal)
            case .success(let record):
                guard let local = links[record.device.linkID] else {
                    _ = store.update(id) { $0 = nil }
                    return .failure(.deviceOffline)
                }
                device = local
            }
        }
        let session = Session(id: id, app: app, device: device, setupTimeout: setupTimeout, requestedAt: requestedAt)
        // The links' own lists are for routing; the store has already enforced the limits. A
        // link that ended meanwhile refuses to join: the device went offline.
        guard join(session) else {
            _ = store.update(id) { $0 = nil }
            if let fleet { try? await fleet.store.forgetSession(id) }
            return .failure(.deviceOffline)
        }
        sessions.update(id) { $0 = session }
        return .success(session)
    }

    /// Adds the session to its parties of this node; false (and none joined) when one ended.
    private func join(_ session: Session) -> Bool {
        var joined: [Link] = []
        for link in session.localParties {
            guard link.join(session, limit: .max) else {
                for party in joined { party.leave(session) }
                return false
            }
            joined.append(link)
        }
        return true
    }

    func opened(_ session: Session) {
        store.update(session.id) { record in
            if record?.phase == .reserved { record?.phase = .open }
        }
    }

    func adopt(_ session: Session) -> Bool {
        guard join(session) else { return false }
        store.update(session.id) { record in
            record = SessionRecord(
                id: session.id,
                app: LinkAddress(node: node, linkID: session.app.id),
                device: LinkAddress(node: node, linkID: session.device.id),
                userID: session.userID,
                deviceID: session.deviceID,
                phase: .open
            )
        }
        sessions.update(session.id) { $0 = session }
        return true
    }

    func remove(_ session: Session) {
        _ = store.update(session.id) { $0 = nil }
        sessions.update(session.id) { current in
            if current === session { current = nil }
        }
        for link in session.localParties { link.leave(session) }
    }

    func session(_ id: String) -> Session? {
        sessions[id]
    }

    var allSessions: [Session] { sessions.values }

    var counts: (apps: Int, devices: Int, sessions: Int) { store.counts }
}

/// A dictionary split into independently locked shards, so unrelated keys never contend.
final class ShardedMap<Key: Hashable & Sendable, Value: Sendable>: Sendable {
    private final class Shard: Sendable {
        let map = Mutex<[Key: Value]>([:])
    }

    private let shards: [Shard]

    init(shardCount: Int = 16) {
        shards = (0..<shardCount).map { _ in Shard() }
    }

    private func shard(_ key: Key) -> Shard {
        shards[Int(UInt(bitPattern: key.hashValue) % UInt(shards.count))]
    }

    subscript(key: Key) -> Value? {
        shard(key).map.withLock { $0[key] }
    }

    /// Reads and changes the value for `key` under its shard's lock.
    @discardableResult
    func update<Result: Sendable>(_ key: Key, _ body: (inout Value?) -> Result) -> Result {
        shard(key).map.withLock { map in
            var value = map[key]
            let result = body(&value)
            map[key] = value
            return result
        }
    }

    var count: Int {
        shards.reduce(0) { total, shard in total + shard.map.withLock { $0.count } }
    }

    var keys: [Key] {
        shards.flatMap { shard in shard.map.withLock { Array($0.keys) } }
    }

    var values: [Value] {
        shards.flatMap { shard in shard.map.withLock { Array($0.values) } }
    }
}
