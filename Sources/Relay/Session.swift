import Foundation
import Synchronization
import TURNBroker

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
    let app: Link
    let device: Link
    /// When the app asked for the session (the audit's `created`; the set-up time starts here).
    let createdAt: Date
    let requestedAt: ContinuousClock.Instant

    /// The app's user id.
    var userID: String { app.principal }
    var deviceID: String { device.principal }

    private struct State {
        var phase = Phase.reserved
        /// Every credential document minted for the session and not yet expired: all of them
        /// may still be in use by the call, so all are revoked when it closes.
        var credentials: [CredentialDocument] = []
        /// Timers (credential refresh, set-up timeout), cancelled when the session closes.
        /// Cancels each pending timer of the session, by name (a newer one replaces an older).
        var timers: [String: @Sendable () -> Void] = [:]
        var answered = false
    }

    private let state = Mutex(State())

    init(app: Link, device: Link, requestedAt: ContinuousClock.Instant = .now) {
        self.id = UUID().uuidString.lowercased()
        self.app = app
        self.device = device
        self.createdAt = Date()
        self.requestedAt = requestedAt
    }

    var currentPhase: Phase { state.withLock { $0.phase } }

    /// The party of the session other than `link`, or nil when `link` is not a party.
    func peer(of link: Link) -> Link? {
        if link === app { return device }
        if link === device { return app }
        return nil
    }

    /// Moves a reserved session to open and runs `announce` (which only queues messages) under
    /// the same lock, so no close can slip between the two; false when it was closed meanwhile.
    func open(with credentials: CredentialDocument, announce: () -> Void) -> Bool {
        state.withLock { state in
            guard state.phase == .reserved else { return false }
            state.phase = .open
            state.credentials = [credentials]
            announce()
            return true
        }
    }

    /// Keeps `cancel` (of a timer of the session, under `name`) to call on close; called at
    /// once when the session closed meanwhile.
    func addTimer(_ name: String, cancel: @escaping @Sendable () -> Void) {
        let closed = state.withLock { state in
            guard state.phase != .closed else { return true }
            state.timers[name] = cancel
            return false
        }
        if closed { cancel() }
    }

    /// Records that an answer went through (the call is set up); true for the first answer.
    func markAnswered() -> Bool {
        state.withLock { state in
            defer { state.answered = true }
            return !state.answered
        }
    }

    var isAnswered: Bool { state.withLock { $0.answered } }

    /// Adds freshly minted credentials and runs `announce` under the lock; false when the
    /// session closed meanwhile (the caller then revokes what it minted).
    func refreshCredentials(_ fresh: CredentialDocument, now: Date = Date(), announce: () -> Void) -> Bool {
        state.withLock { state in
            guard state.phase == .open else { return false }
            state.credentials = state.credentials.filter { !$0.hasExpired(at: now) } + [fresh]
            announce()
            return true
        }
    }

    /// Marks the session closed; returns the phase it was in, or nil when it was already closed,
    /// so exactly one caller carries out a close.
    func markClosed() -> (previous: Phase, credentials: [CredentialDocument])? {
        let closed: (Phase, [CredentialDocument], [String: @Sendable () -> Void])? = state.withLock { state in
            guard state.phase != .closed else { return nil }
            defer {
                state.phase = .closed
                state.credentials = []
                state.timers = [:]
            }
            return (state.phase, state.credentials, state.timers)
        }
        guard let closed else { return nil }
        for cancel in closed.2.values { cancel() }
        return (closed.0, closed.1)
    }
}
