/// The live links and sessions of this process: the facts in the store seam (`LocalStore`), the objects that route messages beside them.
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
    /// Reserves a session between `app` and the live link of `deviceID`, within the limits.
    func reserveSession(app: Link, deviceID: String, limits: SessionLimits, setupTimeout: Duration, requestedAt: ContinuousClock.Instant)
        -> Result<Session, SessionRefusal>
    /// Records that a reserved session opened (its parties were told).
    func opened(_ session: Session)
    /// Takes in an open session restored from the store, between its (restored) links; false
    /// when one of them ended meanwhile.
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
    private let links = ShardedMap<String, Link>()
    private let sessions = ShardedMap<String, Session>()

    init(store: LocalStore = LocalStore()) {
        self.store = store
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
        -> Result<Session, SessionRefusal>
    {
        let id = Session.makeID()
        let record: SessionRecord
        switch store.reserve(sessionID: id, app: app.address, userID: app.principal, deviceID: deviceID, limits: limits) {
        case .failure(let refusal): return .failure(refusal)
        case .success(let reserved): record = reserved
        }
        let session = links[record.device.linkID].map { Session(id: id, app: app, device: $0, setupTimeout: setupTimeout, requestedAt: requestedAt) }
        // The links' own lists are for routing; the store has already enforced the limits. A
        // link that ended meanwhile refuses to join: the device went offline.
        guard let session, session.device.join(session, limit: .max) else {
            _ = store.update(id) { $0 = nil }
            return .failure(.deviceOffline)
        }
        guard app.join(session, limit: .max) else {
            session.device.leave(session)
            _ = store.update(id) { $0 = nil }
            return .failure(.deviceOffline)
        }
        sessions.update(id) { $0 = session }
        return .success(session)
    }

    func opened(_ session: Session) {
        store.update(session.id) { record in
            if record?.phase == .reserved { record?.phase = .open }
        }
    }

    func adopt(_ session: Session) -> Bool {
        guard session.device.join(session, limit: .max) else { return false }
        guard session.app.join(session, limit: .max) else {
            session.device.leave(session)
            return false
        }
        store.update(session.id) { record in
            record = SessionRecord(
                id: session.id,
                app: session.app.address,
                device: session.device.address,
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
        session.app.leave(session)
        session.device.leave(session)
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

    var values: [Value] {
        shards.flatMap { shard in shard.map.withLock { Array($0.values) } }
    }
}
