/// The store seam: links and sessions as values with addresses, the pure rules over them, and the two stores that keep them.

/// A relay process. A relay that runs alone is one node; each node of a cluster has its own id.
public struct NodeID: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    /// The node of a relay that runs alone.
    public static let local = NodeID(rawValue: "local")

    public var description: String { rawValue }
}

/// Where a link lives: the node that owns it, and its id.
public struct LinkAddress: Hashable, Sendable, CustomStringConvertible {
    public var node: NodeID
    public var linkID: String

    public init(node: NodeID, linkID: String) {
        self.node = node
        self.linkID = linkID
    }

    public var description: String { "\(linkID)@\(node)" }
}

/// Who is at the other end of a link.
public enum Party: String, Sendable {
    case app
    case device

    /// The party as the closer of a session it ends.
    public var closer: SessionCloser {
        switch self {
        case .app: .app
        case .device: .device
        }
    }
}

/// A link as the directory knows it: who, where, and whether a transport serves it.
public struct LinkRecord: Sendable, Equatable {
    public var address: LinkAddress
    public var party: Party
    /// The user id of an app, the device id of a device.
    public var principal: String
    /// A transport serves it now (a device that can take a new session).
    public var attached: Bool

    public init(address: LinkAddress, party: Party, principal: String, attached: Bool) {
        self.address = address
        self.party = party
        self.principal = principal
        self.attached = attached
    }
}

/// A session as the store knows it: its parties by address, and its phase.
public struct SessionRecord: Sendable, Equatable {
    public enum Phase: String, Sendable {
        case reserved
        case open
        case closed
    }

    public var id: String
    public var app: LinkAddress
    public var device: LinkAddress
    public var userID: String
    public var deviceID: String
    public var phase: Phase

    public init(id: String, app: LinkAddress, device: LinkAddress, userID: String, deviceID: String, phase: Phase) {
        self.id = id
        self.app = app
        self.device = device
        self.userID = userID
        self.deviceID = deviceID
        self.phase = phase
    }
}

/// How many sessions a device and an app link may take part in at once (contract §5).
public struct SessionLimits: Sendable, Equatable {
    public var maxPerDevice: Int
    public var maxPerApp: Int

    public init(maxPerDevice: Int, maxPerApp: Int) {
        self.maxPerDevice = maxPerDevice
        self.maxPerApp = maxPerApp
    }
}

/// Why a session could not be reserved.
public enum SessionRefusal: Error, Sendable, Equatable {
    case deviceOffline
    case deviceBusy(limit: Int)
    case appLimit(limit: Int)
}

/// Contract §3.1's capacity rule, pure: whatever store runs it (under a lock here, inside a
/// transaction that holds the device's link row in a cluster) gives it what it read and writes
/// the session only when it says yes. Checked in the contract's order: the device's link is
/// live and attached, the device has room, the app link has room.
public enum SessionReservation {
    public static func refusal(device: LinkRecord?, sessionsOfDevice: Int, sessionsOfApp: Int, limits: SessionLimits) -> SessionRefusal? {
        guard let device, device.attached else { return .deviceOffline }
        guard sessionsOfDevice < limits.maxPerDevice else { return .deviceBusy(limit: limits.maxPerDevice) }
        guard sessionsOfApp < limits.maxPerApp else { return .appLimit(limit: limits.maxPerApp) }
        return nil
    }
}

/// Every live link, by address and by principal. Each method is one atomic step of the store;
/// an in-process directory runs it under a lock, a shared one inside a transaction.
public protocol LinkDirectory: Sendable {
    /// Makes `link` live. For a device, contract §4's replace rule in the same step: it becomes
    /// the device's one live link, and the address of the link it replaces is returned (that
    /// link is to close with 4002 and end).
    func register(_ link: LinkRecord) async throws -> LinkAddress?
    /// Records whether a transport serves the link.
    func setAttached(_ attached: Bool, at address: LinkAddress) async throws
    /// Forgets the link (a device's only if it is still the device's live link).
    func unregister(_ address: LinkAddress) async throws
    /// The live links of a principal (an app user may have several; a device one).
    func links(of party: Party, principal: String) async throws -> [LinkRecord]
}

/// Every session not yet closed. Each method is one atomic step of the store.
public protocol SessionStore: Sendable {
    /// Reserves a session between the app link at `app` and the live link of `deviceID`, if
    /// `SessionReservation` allows it: the device's link, its sessions and the app link's are
    /// read, and the reserved session written, in one step.
    func reserve(sessionID: String, app: LinkAddress, userID: String, deviceID: String, limits: SessionLimits) async throws
        -> Result<SessionRecord, SessionRefusal>
    /// Runs `transition` on the session's record atomically and keeps what it leaves (nil
    /// forgets the session); the record is nil when there is no such session.
    func update<T: Sendable>(_ sessionID: String, _ transition: (inout SessionRecord?) -> T) async throws -> T
    /// The sessions a link takes part in.
    func sessions(of address: LinkAddress) async throws -> [SessionRecord]
}
