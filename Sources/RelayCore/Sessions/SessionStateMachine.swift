/// The rules of one session's life (contract §3): reserved → open(answered?) → closed, with its deadlines.

/// One session's life as a pure state machine: each event returns what the caller must do
/// (announce, mint, revoke, arm a timer). Time comes in as instants of the caller's clock;
/// timers are deadlines the machine hands out, and a timer that fires late or for a deadline
/// since moved is harmless (`deadlinePassed` checks what is actually due).
///
/// - reserved: counted against the limits while ICE servers are minted; nobody knows it yet.
/// - open: both parties were told; negotiation flows. Until the first answer, the set-up
///   deadline runs; the refresh deadline always does (at 80 % of the credentials' ttl).
/// - closed: once, with a reason and a closer; every credential still valid is revoked.
public struct SessionStateMachine<Credential: Sendable, Instant: InstantProtocol & Sendable>: Sendable where Instant.Duration == Duration {
    /// A credential document minted for the session, and when it stops being valid.
    public struct Minted: Sendable {
        public var credential: Credential
        public var expiresAt: Instant

        public init(_ credential: Credential, expiresAt: Instant) {
            self.credential = credential
            self.expiresAt = expiresAt
        }
    }

    public struct Open: Sendable {
        public var answered: Bool
        /// The ttl (seconds) each refresh asks for: the first credentials' own.
        public var ttlSeconds: Int
        /// Every credential minted and not yet expired: the call may use any of them.
        var credentials: [Minted]
        /// Set until the first answer.
        public var setupDeadline: Instant?
        /// When to mint fresh credentials; nil while a mint is under way.
        public var refreshDeadline: Instant?

        public init(answered: Bool, ttlSeconds: Int, credentials: [Minted], setupDeadline: Instant?, refreshDeadline: Instant?) {
            self.answered = answered
            self.ttlSeconds = ttlSeconds
            self.credentials = credentials
            self.setupDeadline = setupDeadline
            self.refreshDeadline = refreshDeadline
        }

        /// Every credential minted and not yet expired.
        public var minted: [Minted] { credentials }
    }

    public enum State: Sendable {
        case reserved
        case open(Open)
        case closed(reason: SessionCloseReason, by: SessionCloser)
    }

    public private(set) var state = State.reserved
    let setupTimeout: Duration

    public init(setupTimeout: Duration) {
        self.setupTimeout = setupTimeout
    }

    /// An open session restored from a store, its deadlines as they were (one already past
    /// is due at once: `deadlinePassed`).
    public init(setupTimeout: Duration, restoring open: Open) {
        self.setupTimeout = setupTimeout
        self.state = .open(open)
    }

    @inlinable
    public var isOpen: Bool {
        if case .open = state { return true }
        return false
    }

    @inlinable
    public var isClosed: Bool {
        if case .closed = state { return true }
        return false
    }

    @inlinable
    public var isAnswered: Bool {
        if case .open(let open) = state { return open.answered }
        return false
    }

    /// The earliest deadline to arm a timer for (nil: none).
    public var nextDeadline: Instant? {
        guard case .open(let open) = state else { return nil }
        switch (open.setupDeadline, open.refreshDeadline) {
        case (let setup?, let refresh?): return min(setup, refresh)
        case (let setup, let refresh): return setup ?? refresh
        }
    }

    // MARK: Events

    public enum OpenAction: Sendable {
        /// Tell both parties (under the same lock, so no close slips in between), then arm a
        /// timer for `nextDeadline`.
        case announce
        /// The session closed while its credentials were minted: revoke what was minted.
        case revoke(Credential)
    }

    /// ICE servers were minted for the reserved session.
    public mutating func open(with minted: Minted, ttlSeconds: Int, refreshIn: Duration, now: Instant) -> OpenAction {
        guard case .reserved = state else { return .revoke(minted.credential) }
        state = .open(
            Open(
                answered: false,
                ttlSeconds: ttlSeconds,
                credentials: [minted],
                setupDeadline: now.advanced(by: setupTimeout),
                refreshDeadline: now.advanced(by: refreshIn)
            )
        )
        return .announce
    }

    /// A `webrtc_answer` went through. True for the first one: the call is set up.
    public mutating func answered() -> Bool {
        guard case .open(var open) = state, !open.answered else { return false }
        open.answered = true
        open.setupDeadline = nil
        state = .open(open)
        return true
    }

    public enum DeadlineAction: Sendable {
        case none
        /// Not answered in time: close with `setup_timeout`, by the relay.
        case closeForSetupTimeout
        /// Mint fresh credentials of this ttl (seconds), then call `refreshed` or `refreshFailed`.
        case mint(ttlSeconds: Int)
    }

    /// A timer fired at `now`: what is due. The set-up deadline comes first.
    public mutating func deadlinePassed(now: Instant) -> DeadlineAction {
        guard case .open(var open) = state else { return .none }
        if let setup = open.setupDeadline, setup <= now { return .closeForSetupTimeout }
        if let refresh = open.refreshDeadline, refresh <= now {
            open.refreshDeadline = nil
            state = .open(open)
            return .mint(ttlSeconds: open.ttlSeconds)
        }
        return .none
    }

    public enum RefreshAction: Sendable {
        /// Send both parties `ice_servers_refresh` (under the lock), then arm `nextDeadline`.
        case announce
        /// The session closed during the mint: revoke the fresh credential.
        case revoke(Credential)
    }

    /// Fresh credentials were minted: they join the ones still valid.
    public mutating func refreshed(with minted: Minted, refreshIn: Duration, now: Instant) -> RefreshAction {
        guard case .open(var open) = state else { return .revoke(minted.credential) }
        open.credentials = open.credentials.filter { $0.expiresAt > now } + [minted]
        open.refreshDeadline = now.advanced(by: refreshIn)
        state = .open(open)
        return .announce
    }

    /// Minting failed: try again after `retryIn`. False when the session has closed.
    public mutating func refreshFailed(retryIn: Duration, now: Instant) -> Bool {
        guard case .open(var open) = state else { return false }
        open.refreshDeadline = now.advanced(by: retryIn)
        state = .open(open)
        return true
    }

    public enum CloseAction: Sendable {
        /// Already closed: nothing to do.
        case none
        /// It closed before it opened: nobody was told; revoke nothing (nothing was minted yet).
        case forget
        /// Tell both parties, revoke these credentials, forget the session.
        case announce(revoke: [Credential])
    }

    /// Ends the session once; later closes do nothing.
    public mutating func close(_ reason: SessionCloseReason, by closer: SessionCloser) -> CloseAction {
        switch state {
        case .closed:
            return .none
        case .reserved:
            state = .closed(reason: reason, by: closer)
            return .forget
        case .open(let open):
            state = .closed(reason: reason, by: closer)
            return .announce(revoke: open.credentials.map(\.credential))
        }
    }
}
