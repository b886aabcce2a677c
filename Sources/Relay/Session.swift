import Foundation
import Synchronization

/// One WebRTC call between one app link and one device link.
public final class Session: Sendable {
    public enum Phase: Sendable, Equatable {
        /// Counted against the limits while ICE servers are minted; the parties don't know it yet.
        case reserved
        /// Both parties were told; negotiation messages flow.
        case open
        case closed
    }

    public let id: String
    public let userID: String
    public let deviceID: String
    let app: Link
    let device: Link
    let createdAt: Date
    private let phase = Mutex(Phase.reserved)

    init(app: Link, device: Link) {
        self.id = UUID().uuidString.lowercased()
        self.userID = app.principal
        self.deviceID = device.principal
        self.app = app
        self.device = device
        self.createdAt = Date()
    }

    var currentPhase: Phase { phase.withLock { $0 } }

    /// The party of the session other than `link`, or nil when `link` is not a party.
    func peer(of link: Link) -> Link? {
        if link === app { return device }
        if link === device { return app }
        return nil
    }

    /// Moves a reserved session to open and runs `announce` (which only queues messages) under
    /// the same lock, so no close can slip between the two; false when it was closed meanwhile.
    func open(announce: () -> Void) -> Bool {
        phase.withLock { phase in
            guard phase == .reserved else { return false }
            phase = .open
            announce()
            return true
        }
    }

    /// Marks the session closed; returns the phase it was in, or nil when it was already closed,
    /// so exactly one caller carries out a close.
    func markClosed() -> Phase? {
        phase.withLock { phase in
            guard phase != .closed else { return nil }
            defer { phase = .closed }
            return phase
        }
    }
}
