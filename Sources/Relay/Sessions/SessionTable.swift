/// The session table: the port through which the switchboard finds and reserves links and sessions, with the objects of this node beside its store's facts.
import DeviceAuth
import Foundation
import Registry
import RelayCore

/// The port the switchboard, the routes and the live state use for links and sessions. Two
/// implementations, chosen once in assembly: `LocalSessionTable` (a relay that runs alone, its
/// facts in this process) and `FleetSessionTable` (a node of a fleet on PostgreSQL, where the
/// rules hold fleet-wide). What is the same for both (this node's `Link` and `Session` objects
/// that route messages) is `here`; what differs is what the rest of the relay asks the port,
/// never whether there is a fleet.
protocol SessionTable: Sendable {
    /// This node's links and sessions.
    var here: NodeSessions { get }

    /// Reserves a session between `app` and the live link of `deviceID`, within the limits.
    func reserveSession(app: Link, deviceID: String, limits: SessionLimits, setupTimeout: Duration, requestedAt: ContinuousClock.Instant)
        async throws(StoreError) -> Result<Session, SessionRefusal>

    /// Before a transport is admitted: a link the client resumes that another node has is
    /// brought here; the fresh link the client will get is claimed where every node sees it
    /// (the seed to make it from). Nil when nothing is to be claimed.
    func prepare(_ identity: ClientIdentity, resume: ResumeRequest?, on switchboard: Switchboard) async throws(RelayHTTPError) -> LinkSeed?
    /// An HTTP fallback's request names its link (contract §7): a link another node has follows it here.
    func bringHere(linkID: String, resumeToken: String, on switchboard: Switchboard) async
    /// `POST /api/link/send` for a link another node serves: queued for that node, which handles
    /// them as from the link. How many were queued; nil when no other node serves it.
    func forward(_ messages: [JSONValue], toLink linkID: String, resumeToken: String) async throws(RelayHTTPError) -> Int?

    /// The devices' presence (offline when the store does not answer); capabilities when the
    /// store keeps them.
    func presence(of deviceIDs: [String]) async -> [String: DevicePresence]
    /// What watchers of `deviceID` are to hear at once after it may have changed; nil when the
    /// store tells every node itself once the change is written.
    func presenceNow(of deviceID: String) -> PresenceBoard.Status?
    /// Keeps a device's `device_info` where every node reads presence.
    func describe(deviceID: String, linkID: String, capabilities: JSONValue) async throws(StoreError)

    /// Live sessions as operators see them (every one, or the one with `id`), oldest first.
    func liveSessions(id: String?) async throws(StoreError) -> [FleetSession]
    /// Asks the node that holds session `id` (and keeps its timers) to end it; false when no
    /// other node holds it.
    func endElsewhere(sessionID: String, reason: SessionCloseReason) async throws(StoreError) -> Bool

    /// A restored session's party that is not restored with it: a link another node serves
    /// (nil: none, the session is over).
    func partyElsewhere(_ linkID: String, principal: String, in stored: StoredLiveState) -> (any LinkEndpoint)?
    /// Whether this node lost its place (another node took its links over): its drain is moot.
    var isFenced: Bool { get }
}

/// A device's presence as the store knows it.
struct DevicePresence: Sendable, Equatable {
    var status: PresenceBoard.Status
    /// Its last `device_info` (nil: the store keeps none; this node's sighting tells).
    var capabilities: JSONValue?
}

/// What is the same whichever the store: this node's objects, by id.
extension SessionTable {
    var node: NodeID { here.node }
    /// Makes `link` live. For a device, returns the link it replaces, if any.
    func register(_ link: Link) -> Link? { here.register(link) }
    /// Records whether a transport serves `link` (a device then may take new sessions).
    func setAttached(_ link: Link) { here.setAttached(link) }
    /// Forgets `link` if it is still the live one for its principal.
    func unregister(_ link: Link) { here.unregister(link) }
    /// The links a resume by `principal` may be for (an app user may have several).
    func links(of party: Party, principal: String) -> [Link] { here.links(of: party, principal: principal) }
    /// The live link with this id (HTTP fallback requests name their link).
    func link(id: String) -> Link? { here.link(id: id) }
    /// Every link (for shutdown).
    var allLinks: [Link] { here.allLinks }
    /// Records that a reserved session opened (its parties were told).
    func opened(_ session: Session) { here.opened(session) }
    /// Takes in an open session restored from the store or opened by another node, between its
    /// parties; false when one of those served here ended meanwhile.
    func adopt(_ session: Session) -> Bool { here.adopt(session) }
    /// Removes a session from the table and from its parties served here.
    func remove(_ session: Session) { here.remove(session) }
    /// The session with `id` this node holds.
    func session(_ id: String) -> Session? { here.session(id) }
    /// Every session this node holds.
    var allSessions: [Session] { here.allSessions }
    /// Whether `party` is a link this node serves (its messages are queued here, not sent on).
    func serves(_ party: any LinkEndpoint) -> Bool { here.serves(party) }
    /// Live links by kind and sessions, for health and metrics.
    var counts: (apps: Int, devices: Int, sessions: Int) { here.counts }
}

/// The `SessionTable` of a relay that runs alone: every fact is this process's, so nothing is
/// elsewhere and presence is known at once.
final class LocalSessionTable: SessionTable {
    let here = NodeSessions(node: .local)

    init() {}

    func reserveSession(app: Link, deviceID: String, limits: SessionLimits, setupTimeout: Duration, requestedAt: ContinuousClock.Instant)
        async throws(StoreError) -> Result<Session, SessionRefusal>
    {
        let id = Session.makeID()
        switch here.store.reserve(sessionID: id, app: app.address, userID: app.principal, deviceID: deviceID, limits: limits) {
        case .failure(let refusal):
            return .failure(refusal)
        case .success(let record):
            guard let device = here.link(id: record.device.linkID) else {
                here.forget(id)
                return .failure(.deviceOffline)
            }
            return here.place(Session(id: id, app: app, device: device, keepsTimers: true, setupTimeout: setupTimeout, requestedAt: requestedAt))
        }
    }

    func prepare(_ identity: ClientIdentity, resume: ResumeRequest?, on switchboard: Switchboard) async throws(RelayHTTPError) -> LinkSeed? { nil }

    func bringHere(linkID: String, resumeToken: String, on switchboard: Switchboard) async {}

    func forward(_ messages: [JSONValue], toLink linkID: String, resumeToken: String) async throws(RelayHTTPError) -> Int? { nil }

    func presence(of deviceIDs: [String]) async -> [String: DevicePresence] {
        Dictionary(uniqueKeysWithValues: deviceIDs.map { ($0, DevicePresence(status: here.status(of: $0), capabilities: nil)) })
    }

    func presenceNow(of deviceID: String) -> PresenceBoard.Status? { here.status(of: deviceID) }

    /// The presence board keeps what this node's devices described.
    func describe(deviceID: String, linkID: String, capabilities: JSONValue) async throws(StoreError) {}

    func liveSessions(id: String?) async throws(StoreError) -> [FleetSession] {
        let sessions = id.map { here.session($0).map { [$0] } ?? [] } ?? here.allSessions
        return sessions.sorted { $0.createdAt < $1.createdAt }.map(\.operatorView)
    }

    func endElsewhere(sessionID: String, reason: SessionCloseReason) async throws(StoreError) -> Bool { false }

    func partyElsewhere(_ linkID: String, principal: String, in stored: StoredLiveState) -> (any LinkEndpoint)? { nil }

    var isFenced: Bool { false }
}

/// This node's links and sessions: the facts in a `LocalStore`, the objects that route
/// messages beside them in hash-sharded maps (no global lock on the per-message path, which
/// touches only the two links' own state).
final class NodeSessions: Sendable {
    let store: LocalStore
    private let links = ShardedMap<String, Link>()
    private let sessions = ShardedMap<String, Session>()

    init(node: NodeID) {
        self.store = LocalStore(node: node)
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

    func serves(_ party: any LinkEndpoint) -> Bool {
        links[party.id] === party
    }

    /// The parties of `session` this node serves.
    func servedParties(of session: Session) -> [Link] {
        let parties: [any LinkEndpoint] = [session.app, session.device]
        return parties.compactMap { party in links[party.id].flatMap { $0 === party ? $0 : nil } }
    }

    /// A session reserved by the store's rule joins its parties served here and the table;
    /// `deviceOffline` (and the reservation forgotten) when one ended meanwhile. The links' own
    /// lists are for routing; the store has enforced the limits already.
    func place(_ session: Session) -> Result<Session, SessionRefusal> {
        guard join(session) else {
            forget(session.id)
            return .failure(.deviceOffline)
        }
        sessions.update(session.id) { $0 = session }
        return .success(session)
    }

    /// Forgets a reservation that did not become a session.
    func forget(_ sessionID: String) {
        store.update(sessionID) { $0 = nil }
    }

    /// Adds the session to its parties served here; false (and none joined) when one ended.
    private func join(_ session: Session) -> Bool {
        var joined: [Link] = []
        for link in servedParties(of: session) {
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
        forget(session.id)
        sessions.update(session.id) { current in
            if current === session { current = nil }
        }
        for link in servedParties(of: session) { link.leave(session) }
    }

    func session(_ id: String) -> Session? {
        sessions[id]
    }

    var allSessions: [Session] { sessions.values }

    var counts: (apps: Int, devices: Int, sessions: Int) { store.counts }

    /// A device's presence on this node: a detached (reconnecting) device is offline.
    func status(of deviceID: String) -> PresenceBoard.Status {
        guard let link = links(of: .device, principal: deviceID).first, link.isAttached else {
            return .init(online: false, sessions: 0)
        }
        return .init(online: true, sessions: link.sessions.count { $0.currentPhase == .open })
    }
}
