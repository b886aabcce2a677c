/// The live links and sessions of this process: find a device's link, reserve and forget sessions.
import Synchronization

/// Why a session could not be reserved.
enum SessionRefusal: Error, Sendable {
    case deviceOffline
    case deviceBusy(limit: Int)
    case appLimit(limit: Int)
}

/// The table of live links and sessions: the one interface the rest of the relay uses to find
/// a device's link, reserve and find sessions, and forget them. This implementation keeps them
/// in this process; a shared implementation (several relay nodes) conforms to the same protocol.
protocol SessionTable: Sendable {
    /// Makes `link` live. For a device, returns the link it replaces, if any.
    func register(_ link: Link) -> Link?
    /// Forgets `link` if it is still the live one for its principal.
    func unregister(_ link: Link)
    /// The links a resume by `principal` may be for (an app user may have several).
    func links(of party: Party, principal: String) -> [Link]
    /// The live link with this id (HTTP fallback requests name their link).
    func link(id: String) -> Link?
    /// Every link (for shutdown).
    var allLinks: [Link] { get }
    /// Reserves a session between `app` and the live link of `deviceID`, within the limits.
    func reserveSession(
        app: Link,
        deviceID: String,
        maxPerDevice: Int,
        maxPerApp: Int,
        setupTimeout: Duration,
        requestedAt: ContinuousClock.Instant
    )
        -> Result<Session, SessionRefusal>
    /// Removes a session from the table and from both parties.
    func remove(_ session: Session)
    /// The session with `id`, whoever its parties are (for operators).
    func session(_ id: String) -> Session?
    /// Every session (for operators).
    var allSessions: [Session] { get }
    /// Live links by kind and sessions, for health and metrics.
    var counts: (apps: Int, devices: Int, sessions: Int) { get }
}

/// An in-process `SessionTable`. No global lock: devices and sessions live in hash-sharded maps,
/// and the hot path (routing inside a session) touches only the two links' own state.
final class LocalSessionTable: SessionTable {
    private let devices = ShardedMap<String, Link>()
    private let sessions = ShardedMap<String, Session>()
    /// App links by user id.
    private let appLinks = ShardedMap<String, [Link]>()
    private let linksByID = ShardedMap<String, Link>()

    func register(_ link: Link) -> Link? {
        linksByID.update(link.id) { $0 = link }
        switch link.party {
        case .app:
            appLinks.update(link.principal) { links in links = (links ?? []) + [link] }
            return nil
        case .device:
            return devices.update(link.principal) { current in
                defer { current = link }
                return current
            }
        }
    }

    func unregister(_ link: Link) {
        linksByID.update(link.id) { $0 = nil }
        switch link.party {
        case .app:
            appLinks.update(link.principal) { links in
                links = links?.filter { $0 !== link }
                if links?.isEmpty == true { links = nil }
            }
        case .device:
            devices.update(link.principal) { current in
                if current === link { current = nil }
            }
        }
    }

    func link(id: String) -> Link? {
        linksByID[id]
    }

    func links(of party: Party, principal: String) -> [Link] {
        switch party {
        case .app: appLinks[principal] ?? []
        case .device: devices[principal].map { [$0] } ?? []
        }
    }

    var allLinks: [Link] {
        appLinks.values.flatMap { $0 } + devices.values
    }

    func reserveSession(
        app: Link,
        deviceID: String,
        maxPerDevice: Int,
        maxPerApp: Int,
        setupTimeout: Duration,
        requestedAt: ContinuousClock.Instant
    ) -> Result<Session, SessionRefusal> {
        guard let device = devices[deviceID], device.isAttached else { return .failure(.deviceOffline) }
        let session = Session(app: app, device: device, setupTimeout: setupTimeout, requestedAt: requestedAt)
        guard device.join(session, limit: maxPerDevice) else { return .failure(.deviceBusy(limit: maxPerDevice)) }
        guard app.join(session, limit: maxPerApp) else {
            device.leave(session)
            return .failure(.appLimit(limit: maxPerApp))
        }
        sessions.update(session.id) { $0 = session }
        // The device may have been replaced or gone while we joined it: re-check.
        guard devices[deviceID] === device, device.isAttached else {
            remove(session)
            return .failure(.deviceOffline)
        }
        return .success(session)
    }

    func remove(_ session: Session) {
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

    var counts: (apps: Int, devices: Int, sessions: Int) {
        (appLinks.values.reduce(0) { $0 + $1.count }, devices.count, sessions.count)
    }
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
