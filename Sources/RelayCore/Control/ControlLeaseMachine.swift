/// Who drives a robot (contract §12): one device's control lease and e-stops, as a pure machine.

/// What an app's token lets it do with a device's control (claim `control`; `drive` when absent).
public enum ControlRole: String, Sendable, Equatable, CaseIterable {
    /// May watch and raise an e-stop, never drive.
    case observe
    /// May take a free lease.
    case drive
    /// May also take a held lease over, and clear an e-stop.
    case supervise
}

/// One device's control: who holds its lease until when, its `epoch`, the e-stop that blocks new
/// leases, and the e-stops the device has not acked yet. It is both the record the store keeps
/// per device (one node's SQLite, or the fleet's PostgreSQL, where each event is applied inside
/// one transaction on the device's row) and the rules: each event changes it and returns what
/// the parties are told. Time comes in as wall-clock instants; the lease's expiry is a deadline
/// the caller arms a timer for (`nextDeadline`), and a timer that fires early or for a deadline
/// since moved by a renewal is harmless (`expire` checks what is actually due).
///
/// `epoch` grows by one with every change of holder or e-stop (every `control_state`), never
/// goes back, and is kept with the record: a device fences commands with it. (`Codable` is how
/// the stores keep it.)
public struct ControlLeaseMachine: Sendable, Equatable, Codable {
    /// A granted lease.
    public struct Lease: Sendable, Equatable, Codable {
        public var leaseID: String
        public var sessionID: String
        public var userID: String
        public var ttl: Duration
        public var expiresAt: UnixMilliseconds

        public init(leaseID: String, sessionID: String, userID: String, ttl: Duration, expiresAt: UnixMilliseconds) {
            self.leaseID = leaseID
            self.sessionID = sessionID
            self.userID = userID
            self.ttl = ttl
            self.expiresAt = expiresAt
        }
    }

    /// Who raised an e-stop.
    public enum Raiser: Sendable, Equatable, Codable {
        case app(userID: String)
        case device
    }

    /// One e-stop: kept for the device until it acks (sent again on every resume).
    public struct EStop: Sendable, Equatable, Codable {
        public var estopID: String
        public var by: Raiser
        public var reason: String?
        public var raisedAt: UnixMilliseconds
        /// The link that raised it, told `estop_acked` (nil: the device's own).
        public var senderLinkID: String?

        public init(estopID: String, by: Raiser, reason: String?, raisedAt: UnixMilliseconds, senderLinkID: String?) {
            self.estopID = estopID
            self.by = by
            self.reason = reason
            self.raisedAt = raisedAt
            self.senderLinkID = senderLinkID
        }
    }

    /// Why the control changed, as `control_state`'s `reason` says it.
    public enum Reason: String, Sendable, Equatable, CaseIterable {
        case granted
        case released
        case expired
        case takenOver = "taken_over"
        case sessionClosed = "session_closed"
        case estop
        case estopCleared = "estop_cleared"
    }

    /// One change, to announce as `control_state` to the device and every app on it.
    public struct Change: Sendable, Equatable {
        public var epoch: Int64
        /// The holder after the change; nil: nobody drives.
        public var lease: Lease?
        public var reason: Reason

        public init(epoch: Int64, lease: Lease?, reason: Reason) {
            self.epoch = epoch
            self.lease = lease
            self.reason = reason
        }
    }

    public enum Refusal: Error, Sendable, Equatable {
        /// Someone else drives (the error names nobody).
        case held
        /// Role `observe`, a takeover without `supervise`, or a clear without it.
        case forbidden
        /// An e-stop is raised: no lease until it is cleared.
        case estopped
        /// The lease named is not (or no longer) held.
        case lost
    }

    /// At most this many e-stops wait for the device's ack; past it the oldest is dropped (any
    /// one of them stops the device, and the link's own bound, 10 a second, keeps this rare).
    public static let unackedLimit = 16
    /// The ttl a `control_acquire` may ask for.
    public static let ttlRange: ClosedRange<Duration> = .milliseconds(200) ... .milliseconds(60_000)

    public private(set) var epoch: Int64
    public private(set) var lease: Lease?
    /// The e-stop that refuses new leases until cleared (acked or not).
    public private(set) var raised: EStop?
    /// E-stops the device has not acked, oldest first.
    public private(set) var unacked: [EStop]

    /// A device nobody has driven yet.
    public init() {
        self.init(epoch: 0, lease: nil, raised: nil, unacked: [])
    }

    /// A record as a store kept it.
    public init(epoch: Int64, lease: Lease?, raised: EStop?, unacked: [EStop]) {
        self.epoch = epoch
        self.lease = lease
        self.raised = raised
        self.unacked = unacked
    }

    /// When the lease lapses unless renewed: the timer to arm (nil: nothing held).
    public var nextDeadline: UnixMilliseconds? { lease?.expiresAt }

    /// The state as a client is told it on connect or resume (reason `granted` or `released`).
    public var current: Change {
        Change(epoch: epoch, lease: lease, reason: lease == nil ? .released : .granted)
    }

    // MARK: Events

    /// `control_acquire` from `userID`'s app on `sessionID`. A lease past its expiry lapses
    /// first (its `expired` change comes before the grant). The grant is a change of its own,
    /// or part of the takeover's; `leaseID` names the new lease.
    public mutating func acquire(
        sessionID: String,
        userID: String,
        role: ControlRole,
        ttl: Duration,
        takeover: Bool,
        leaseID: String,
        now: UnixMilliseconds
    ) -> Result<(lease: Lease, changes: [Change]), Refusal> {
        guard role != .observe, !takeover || role == .supervise else { return .failure(.forbidden) }
        guard raised == nil else { return .failure(.estopped) }
        var changes = expire(now: now).map { [$0] } ?? []
        let granted = Lease(leaseID: leaseID, sessionID: sessionID, userID: userID, ttl: ttl, expiresAt: now.advanced(by: ttl))
        switch lease {
        case nil:
            changes.append(change(to: granted, .granted))
        case let held? where held.sessionID == sessionID:
            // The holder asking again gets a fresh lease (its old lease id is lost).
            changes.append(change(to: granted, .granted))
        case _? where takeover:
            changes.append(change(to: granted, .takenOver))
        case _?:
            return .failure(.held)
        }
        return .success((granted, changes))
    }

    /// `control_renew`: the same lease, expiring `ttl` from now. No change is announced.
    public mutating func renew(sessionID: String, leaseID: String, now: UnixMilliseconds) -> Result<Lease, Refusal> {
        guard var held = lease, held.leaseID == leaseID, held.sessionID == sessionID, now < held.expiresAt else {
            return .failure(.lost)
        }
        held.expiresAt = now.advanced(by: held.ttl)
        lease = held
        return .success(held)
    }

    /// `control_release` by the holder.
    public mutating func release(sessionID: String, leaseID: String) -> Result<Change, Refusal> {
        guard let held = lease, held.leaseID == leaseID, held.sessionID == sessionID else { return .failure(.lost) }
        return .success(change(to: nil, .released))
    }

    /// The dead man: the lease lapses once `now` reaches its expiry (nil: nothing due).
    public mutating func expire(now: UnixMilliseconds) -> Change? {
        guard let held = lease, held.expiresAt <= now else { return nil }
        return change(to: nil, .expired)
    }

    /// `sessionID` closed: the lease it held ends (nil: it held none).
    public mutating func sessionClosed(_ sessionID: String) -> Change? {
        guard lease?.sessionID == sessionID else { return nil }
        return change(to: nil, .sessionClosed)
    }

    /// An e-stop is raised: the lease ends, new ones are refused until a clear, and the device
    /// is sent it until it acks.
    public mutating func raise(_ estop: EStop) -> Change {
        raised = estop
        unacked.append(estop)
        if unacked.count > Self.unackedLimit { unacked.removeFirst(unacked.count - Self.unackedLimit) }
        return change(to: nil, .estop)
    }

    /// The device acked `estopID`: it is no longer sent; returns it (nil: not waiting).
    public mutating func acknowledge(_ estopID: String) -> EStop? {
        guard let index = unacked.firstIndex(where: { $0.estopID == estopID }) else { return nil }
        return unacked.remove(at: index)
    }

    /// `estop_clear` from an app of `role`, or from the device (`role` nil). Nil change: nothing
    /// was raised.
    public mutating func clear(by role: ControlRole?) -> Result<Change?, Refusal> {
        guard role == nil || role == .supervise else { return .failure(.forbidden) }
        guard raised != nil else { return .success(nil) }
        raised = nil
        return .success(change(to: nil, .estopCleared))
    }

    /// Whether a `control` command from `sessionID` carrying `epoch` may reach the device.
    public func admits(command sessionID: String, epoch: Int64, now: UnixMilliseconds) -> Bool {
        guard let held = lease else { return false }
        return held.sessionID == sessionID && epoch == self.epoch && now < held.expiresAt
    }

    private mutating func change(to lease: Lease?, _ reason: Reason) -> Change {
        self.lease = lease
        epoch += 1
        return Change(epoch: epoch, lease: lease, reason: reason)
    }
}
