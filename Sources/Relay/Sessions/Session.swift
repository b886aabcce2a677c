/// One WebRTC call between an app link and a device link: its rules' state behind a lock, and its one timer.
import Foundation
import NIOCore
import OpenSSLCrypto
import Registry
import RelayCore
import Synchronization
import TURNBroker

/// One WebRTC call between one app link and one device link. Its rules are a
/// `SessionStateMachine`; this class holds it under a lock, runs what must happen under that
/// lock (announcements, so no close slips between them), and keeps the one timer armed for the
/// machine's next deadline.
public final class Session: Sendable {
    typealias Machine = SessionStateMachine<CredentialDocument, ContinuousClock.Instant>

    public enum Phase: Sendable, Equatable {
        /// Counted against the limits while ICE servers are minted; the parties don't know it yet.
        case reserved
        /// Both parties were told; negotiation messages flow.
        case open
        case closed
    }

    public let id: String
    /// The parties: links of this node, or (in a fleet) of another node.
    let app: any LinkEndpoint
    let device: any LinkEndpoint
    /// When the app asked for the session (the audit's `created`; the set-up time starts here).
    let createdAt: Date
    let requestedAt: ContinuousClock.Instant

    /// The app's user id.
    var userID: String { app.principal }
    var deviceID: String { device.principal }

    private struct State {
        var machine: Machine
        /// The timer armed for the machine's next deadline.
        var timer: Scheduled<Void>?
        /// Another object stands for the session from now on (`discard`): this one writes nothing.
        var discarded = false
    }

    private let state: Mutex<State>

    /// A fresh session id.
    static func makeID() -> String { LibCrypto.randomUUID() }

    init(
        id: String,
        app: any LinkEndpoint,
        device: any LinkEndpoint,
        keepsTimers: Bool,
        setupTimeout: Duration,
        requestedAt: ContinuousClock.Instant = .now
    ) {
        self.id = id
        self.app = app
        self.device = device
        self.keepsTimers = keepsTimers
        self.createdAt = Date()
        self.requestedAt = requestedAt
        self.state = Mutex(State(machine: Machine(setupTimeout: setupTimeout)))
    }

    /// An open session a previous process left in the store, between its restored links; its
    /// deadlines (Unix seconds there) become instants of this process's clock.
    init?(
        restoring stored: StoredSession,
        app: any LinkEndpoint,
        device: any LinkEndpoint,
        keepsTimers: Bool,
        setupTimeout: Duration,
        clock: WallClock
    ) {
        var credentials: [Machine.Minted] = []
        for credential in stored.credentials {
            guard let document = try? JSONDecoder().decode(CredentialDocument.self, from: Data(credential.document.utf8)) else { return nil }
            credentials.append(.init(document, expiresAt: clock.instant(credential.expiresAt)))
        }
        self.id = stored.id
        self.app = app
        self.device = device
        self.keepsTimers = keepsTimers
        self.createdAt = Date(timeIntervalSince1970: stored.createdAt)
        self.requestedAt = clock.instant(stored.createdAt)
        let open = Machine.Open(
            answered: stored.answered,
            ttlSeconds: stored.ttlSeconds,
            credentials: credentials,
            setupDeadline: stored.setupDeadline.map(clock.instant),
            // A mint under way when the process stopped is due again at once; credentials
            // that never expire (a static STUN list, ttl 0) are never refreshed.
            refreshDeadline: stored.refreshAt.map(clock.instant) ?? (stored.ttlSeconds > 0 ? clock.instant(clock.wallNow) : nil)
        )
        self.state = Mutex(State(machine: Machine(setupTimeout: setupTimeout, restoring: open)))
    }

    /// This node runs the session's timers, revokes its credentials and keeps its row: the
    /// device's link is served here (in a fleet, the other party's node keeps a copy that
    /// routes). Whoever makes the session knows where its device is.
    let keepsTimers: Bool

    /// Adds to `batch` the session as the store is to keep it: open (by the node keeping its
    /// timers), or gone once closed (a reserved session is not stored by this).
    func journal(into batch: inout LiveStateBatch, clock: WallClock = WallClock()) {
        state.withLock { state in
            guard !state.discarded else { return }
            switch state.machine.state {
            case .reserved:
                return
            case .closed:
                batch.endedSessions.append(id)
            case .open(let open):
                guard keepsTimers else { return }
                batch.sessions.append(stored(open, clock: clock))
            }
        }
    }

    /// The open session as the store keeps it (nil unless open).
    func storedRow(clock: WallClock = WallClock()) -> StoredSession? {
        state.withLock { state in
            guard case .open(let open) = state.machine.state else { return nil }
            return stored(open, clock: clock)
        }
    }

    /// The open session as the store keeps it.
    private func stored(_ open: Machine.Open, clock: WallClock) -> StoredSession {
        StoredSession(
            id: id,
            appLink: app.id,
            deviceLink: device.id,
            userID: userID,
            deviceID: deviceID,
            createdAt: createdAt.timeIntervalSince1970,
            answered: open.answered,
            ttlSeconds: open.ttlSeconds,
            setupDeadline: open.setupDeadline.map(clock.wall),
            refreshAt: open.refreshDeadline.map(clock.wall),
            credentials: open.minted.map { minted in
                StoredSession.Credential(
                    document: String(decoding: (try? JSONEncoder().encode(minted.credential)) ?? Data(), as: UTF8.self),
                    expiresAt: clock.wall(minted.expiresAt)
                )
            }
        )
    }

    /// The session as operators see it (`GET /admin/sessions`).
    var operatorView: FleetSession {
        FleetSession(
            id: id,
            userID: userID,
            deviceID: deviceID,
            deviceLink: device.id,
            createdAt: createdAt.timeIntervalSince1970,
            opened: currentPhase == .open,
            answered: isAnswered
        )
    }

    var currentPhase: Phase {
        state.withLock { state in
            switch state.machine.state {
            case .reserved: .reserved
            case .open: .open
            case .closed: .closed
            }
        }
    }

    /// Whether negotiation messages flow (the per-message check).
    var isOpen: Bool { state.withLock { $0.machine.isOpen } }

    var isAnswered: Bool { state.withLock { $0.machine.isAnswered } }

    /// The party of the session other than `link`, or nil when `link` is not a party.
    func peer(of link: Link) -> (any LinkEndpoint)? {
        if link === app { return device }
        if link === device { return app }
        return nil
    }

    private static func minted(_ document: CredentialDocument, now: ContinuousClock.Instant) -> Machine.Minted {
        .init(document, expiresAt: now + .seconds(document.ttl))
    }

    /// Opens the reserved session with its first credentials and runs `announce` (which only
    /// queues messages) under the same lock, with the session as the store keeps it; false
    /// when it closed meanwhile.
    func open(
        with document: CredentialDocument,
        refreshIn: Duration,
        now: ContinuousClock.Instant = .now,
        announce: (StoredSession) -> Void
    ) -> Bool {
        state.withLock { state in
            guard case .announce = state.machine.open(with: Self.minted(document, now: now), ttlSeconds: document.ttl, refreshIn: refreshIn, now: now),
                case .open(let open) = state.machine.state
            else { return false }
            announce(stored(open, clock: WallClock()))
            return true
        }
    }

    /// Records that an answer went through; true for the first answer (the call is set up).
    func markAnswered() -> Bool {
        state.withLock { $0.machine.answered() }
    }

    /// A timer fired: what is due now.
    func deadlinePassed(now: ContinuousClock.Instant = .now) -> Machine.DeadlineAction {
        state.withLock { $0.machine.deadlinePassed(now: now) }
    }

    /// Adds freshly minted credentials and runs `announce` under the lock; false when the
    /// session closed meanwhile (the caller then revokes what it minted).
    func refreshed(with document: CredentialDocument, refreshIn: Duration, now: ContinuousClock.Instant = .now, announce: () -> Void) -> Bool {
        state.withLock { state in
            guard case .announce = state.machine.refreshed(with: Self.minted(document, now: now), refreshIn: refreshIn, now: now) else {
                return false
            }
            announce()
            return true
        }
    }

    /// Minting fresh credentials failed; the next try is due after `retryIn`.
    func refreshFailed(retryIn: Duration, now: ContinuousClock.Instant = .now) -> Bool {
        state.withLock { $0.machine.refreshFailed(retryIn: retryIn, now: now) }
    }

    /// Arms `schedule` for the machine's next deadline (replacing the timer armed before), or
    /// nothing when none is due.
    func armTimer(now: ContinuousClock.Instant = .now, _ schedule: (Duration) -> Scheduled<Void>) {
        let replaced: Scheduled<Void>? = state.withLock { state in
            defer { state.timer = state.machine.nextDeadline.map { schedule(max($0 - now, .zero)) } }
            return state.timer
        }
        replaced?.cancel()
    }

    /// Closes this copy without a word: another object stands for the session from now on.
    func discard() {
        state.withLock { $0.discarded = true }
        _ = markClosed(.peerDisconnected, by: .relay)
    }

    /// Ends the session once: what to do about it (nothing when it had already closed).
    func markClosed(_ reason: SessionCloseReason, by closer: SessionCloser) -> Machine.CloseAction {
        let (action, timer): (Machine.CloseAction, Scheduled<Void>?) = state.withLock { state in
            defer { state.timer = nil }
            return (state.machine.close(reason, by: closer), state.timer)
        }
        timer?.cancel()
        return action
    }
}
