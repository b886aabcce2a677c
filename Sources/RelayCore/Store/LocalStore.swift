/// The store seam in this process: links and sessions as values under one lock.
import Synchronization

/// The in-process `LinkDirectory` and `SessionStore`: every step runs under one lock, so a
/// reservation sees the device's link and its sessions as one consistent picture. Its methods
/// are synchronous (a lock, no I/O); the protocols' asynchronous shape is for stores that talk
/// to a database.
public final class LocalStore: LinkDirectory, SessionStore, Sendable {
    private struct State {
        var links: [String: LinkRecord] = [:]
        /// The live link of each device (contract §4: at most one).
        var deviceLink: [String: String] = [:]
        /// The live links of each app user.
        var appLinks: [String: Set<String>] = [:]
        var sessions: [String: SessionRecord] = [:]
        var sessionsByLink: [String: Set<String>] = [:]

        mutating func index(_ session: SessionRecord) {
            sessionsByLink[session.app.linkID, default: []].insert(session.id)
            sessionsByLink[session.device.linkID, default: []].insert(session.id)
        }

        mutating func unindex(_ session: SessionRecord) {
            for linkID in [session.app.linkID, session.device.linkID] {
                sessionsByLink[linkID]?.remove(session.id)
                if sessionsByLink[linkID]?.isEmpty == true { sessionsByLink[linkID] = nil }
            }
        }
    }

    private let state = Mutex(State())
    public let node: NodeID

    public init(node: NodeID = .local) {
        self.node = node
    }

    // MARK: LinkDirectory

    public func register(_ link: LinkRecord) -> LinkAddress? {
        state.withLock { state in
            state.links[link.address.linkID] = link
            switch link.party {
            case .app:
                state.appLinks[link.principal, default: []].insert(link.address.linkID)
                return nil
            case .device:
                defer { state.deviceLink[link.principal] = link.address.linkID }
                return state.deviceLink[link.principal].flatMap { state.links[$0]?.address }
            }
        }
    }

    public func setAttached(_ attached: Bool, at address: LinkAddress) {
        state.withLock { $0.links[address.linkID]?.attached = attached }
    }

    public func unregister(_ address: LinkAddress) {
        state.withLock { state in
            guard let link = state.links.removeValue(forKey: address.linkID) else { return }
            switch link.party {
            case .app:
                state.appLinks[link.principal]?.remove(address.linkID)
                if state.appLinks[link.principal]?.isEmpty == true { state.appLinks[link.principal] = nil }
            case .device:
                if state.deviceLink[link.principal] == address.linkID { state.deviceLink[link.principal] = nil }
            }
        }
    }

    public func links(of party: Party, principal: String) -> [LinkRecord] {
        state.withLock { state in
            switch party {
            case .app: (state.appLinks[principal] ?? []).compactMap { state.links[$0] }
            case .device: state.deviceLink[principal].flatMap { state.links[$0] }.map { [$0] } ?? []
            }
        }
    }

    /// The live link with this id.
    public func link(id: String) -> LinkRecord? {
        state.withLock { $0.links[id] }
    }

    /// How many live links of each party and sessions there are.
    public var counts: (apps: Int, devices: Int, sessions: Int) {
        state.withLock { state in
            (state.appLinks.values.reduce(0) { $0 + $1.count }, state.deviceLink.count, state.sessions.count)
        }
    }

    // MARK: SessionStore

    public func reserve(sessionID: String, app: LinkAddress, userID: String, deviceID: String, limits: SessionLimits)
        -> Result<SessionRecord, SessionRefusal>
    {
        state.withLock { state in
            let device = state.deviceLink[deviceID].flatMap { state.links[$0] }
            if let refusal = SessionReservation.refusal(
                device: device,
                sessionsOfDevice: device.map { state.sessionsByLink[$0.address.linkID]?.count ?? 0 } ?? 0,
                sessionsOfApp: state.sessionsByLink[app.linkID]?.count ?? 0,
                limits: limits
            ) {
                return .failure(refusal)
            }
            guard let device else { return .failure(.deviceOffline) }
            let session = SessionRecord(id: sessionID, app: app, device: device.address, userID: userID, deviceID: deviceID, phase: .reserved)
            state.sessions[sessionID] = session
            state.index(session)
            return .success(session)
        }
    }

    public func update<T: Sendable>(_ sessionID: String, _ transition: (inout SessionRecord?) -> T) -> T {
        state.withLock { state in
            var record = state.sessions[sessionID]
            let before = record
            let result = transition(&record)
            if let before { state.unindex(before) }
            state.sessions[sessionID] = record
            if let record { state.index(record) }
            return result
        }
    }

    public func sessions(of address: LinkAddress) -> [SessionRecord] {
        state.withLock { state in (state.sessionsByLink[address.linkID] ?? []).compactMap { state.sessions[$0] } }
    }

    /// The session with this id.
    public func session(id: String) -> SessionRecord? {
        state.withLock { $0.sessions[id] }
    }
}
