/// One logical client connection: its rules (a `LinkStateMachine`) behind one lock, with the hooks of its current transport.
import DeviceAuth
import Foundation
import NIOCore
import OpenSSLCrypto
import Registry
import RelayCore
import Synchronization

/// One logical client connection (contract §4). Its rules (attachment, `seq` and kept
/// messages, rate limit, token expiry) are a `LinkStateMachine`; this class holds it under one
/// lock together with what its current transport needs to be woken or dropped, its sessions
/// and its watches, and arms its grace timer. Routing offers a message and returns; it never
/// waits on a transport.
///
/// A transport takes its messages one of two ways: a WebSocket on its own event loop
/// (`push`: asked to drain once per batch, answering with `takePushed`), an HTTP fallback's
/// task by waiting (`next`).
public final class Link: LinkEndpoint {
    typealias Machine = LinkStateMachine<ContinuousClock.Instant>
    typealias Frame = OutboxBuffer.Frame

    public let id: String
    /// SHA-256 of the resume token (256 random bits, base64url), which proves a resume comes
    /// from whoever got this link's `hello`. The store keeps only the hash.
    let tokenHash: [UInt8]
    public let party: Party
    /// The user id for an app, the device id for a device.
    public let principal: String
    /// Where the link lives (this node).
    let address: LinkAddress
    private let metrics: RelayMetrics
    /// Where the link's changes go so the next process can take it over (nil: nowhere).
    private let journal: LiveStateJournal?

    /// What a waiting writer (`next`) gets.
    enum Event: Sendable, Equatable {
        /// Frames to write, in order.
        case send([Frame])
        /// Write a close with this code and reason, then stop.
        case close(code: UInt16, reason: String)
    }

    private struct State {
        var machine: Machine
        /// The resume token; a restored link learns it from the client that resumes it.
        var resumeToken: String?
        var app: AppIdentity?
        var stored = StoredLinkMarks()
        var sessions: [String: Session] = [:]
        /// Device ids this (app) link watches (contract §8).
        var watched: Set<String> = []
        /// Drops the current transport at once (its writer may be stuck on a full socket).
        var dropTransport: (@Sendable () -> Void)?
        /// A writer task waiting for the next event of its generation.
        var waiter: (generation: Int, continuation: CheckedContinuation<Event?, Never>)?
        /// A transport that takes frames on its own event loop: asked to drain once per batch.
        var push: (@Sendable () -> Void)?
        var pushScheduled = false
        var graceTimer: Scheduled<Void>?
        /// The HTTP lease's timer (contract §7).
        var leaseTimer: Scheduled<Void>?
        /// Set while and once the link moves to another node of the fleet.
        var move: Move?
    }

    /// A link moving to another node: what is sent to it meanwhile waits, then follows it.
    private enum Move {
        case underway([(OutboundMessage, SessionEvent?)])
        case done(RemoteLink)
    }

    private let state: Mutex<State>

    init(
        node: NodeID,
        seed: LinkSeed = LinkSeed(),
        party: Party,
        principal: String,
        app: AppIdentity?,
        machine: Machine,
        metrics: RelayMetrics,
        journal: LiveStateJournal?
    ) {
        self.metrics = metrics
        self.journal = journal
        self.id = seed.id
        self.address = LinkAddress(node: node, linkID: id)
        self.tokenHash = seed.tokenHash
        self.party = party
        self.principal = principal
        self.state = Mutex(State(machine: machine, resumeToken: seed.token, app: app))
    }

    /// A link a previous process left in the store: detached (`machine`), its row and kept
    /// messages already stored.
    init(
        node: NodeID,
        restoring stored: StoredLink,
        party: Party,
        app: AppIdentity?,
        machine: Machine,
        metrics: RelayMetrics,
        journal: LiveStateJournal?
    ) {
        self.metrics = metrics
        self.journal = journal
        self.id = stored.id
        self.address = LinkAddress(node: node, linkID: id)
        self.tokenHash = stored.tokenHash
        self.party = party
        self.principal = stored.principal
        var state = State(machine: machine, resumeToken: nil, app: app)
        state.stored = StoredLinkMarks(restored: machine)
        // The row says it was restored (and where its store's messages ended then): a node it
        // moves to, or that takes it over, renumbers from there on its first resume.
        state.stored.row = stored.restoredThrough == machine.restoredThrough
        self.state = Mutex(state)
    }

    /// Constant-time check of a presented resume token (over its hash). A restored link
    /// learns its token from the first client that presents it.
    func accepts(resumeToken presented: String) -> Bool {
        guard LibCrypto.constantTimeEquals(tokenHash, LibCrypto.sha256(Array(presented.utf8))) else { return false }
        state.withLock { state in
            if state.resumeToken == nil { state.resumeToken = presented }
        }
        return true
    }

    /// The resume token, for `hello` (a restored link knows it once a client resumed it).
    var resumeToken: String { state.withLock { $0.resumeToken ?? "" } }

    // MARK: Identity and limits

    /// The app's current token identity (nil for devices).
    var appIdentity: AppIdentity? { state.withLock { $0.app } }

    /// A fresh token for the same user: honoured until `validUntil` (unix seconds).
    func replaceAppIdentity(_ identity: AppIdentity, validUntil: Double) {
        let listed = state.withLock { state in
            state.app = identity
            state.machine.tokenRefreshed(validUntil: validUntil)
            state.stored.row = false
            return state.stored.list()
        }
        if listed { journal?.linkChanged(self) }
    }

    /// Until when an app's token is honoured (unix seconds); nil for devices.
    var tokenValidUntil: Double? { state.withLock { $0.machine.tokenValidUntil } }

    func tokenHasExpired(at wallClock: Double = Date().timeIntervalSince1970) -> Bool {
        state.withLock { $0.machine.tokenHasExpired(at: wallClock) }
    }

    /// Spends a token of the link's message budget: whether the message may pass, and how many
    /// were refused in a row (0 when it passes).
    func takeMessageToken(now: ContinuousClock.Instant = .now) -> (allowed: Bool, refusedInARow: Int) {
        state.withLock { $0.machine.admitMessage(now: now) }
    }

    /// Replaces the set of watched devices; returns the previous one.
    func replaceWatched(with deviceIDs: Set<String>) -> Set<String> {
        state.withLock { state in
            defer { state.watched = deviceIDs }
            return state.watched
        }
    }

    // MARK: Attachment

    /// Runs `body` with whether a transport serves the link, under the link's lock: what it
    /// records elsewhere (the directory) cannot be overtaken by a later attach or detach.
    func withAttachment(_ body: (Bool) -> Void) {
        state.withLock { body($0.machine.isAttached) }
    }
    var isAttached: Bool { state.withLock { $0.machine.isAttached } }
    var isEnded: Bool { state.withLock { $0.machine.isEnded } }

    /// A transport attaches (see `LinkStateMachine.attach`); `dropTransport` drops it if it
    /// falls behind. The superseded writer is told to stop, the grace and lease timers are
    /// cancelled.
    func attach(resumingAfter lastSeq: Int?, dropTransport: @escaping @Sendable () -> Void) -> (generation: Int, previous: Machine.Previous)? {
        var listed = false
        let (action, stale, stalePush, timers):
            (Machine.AttachAction, CheckedContinuation<Event?, Never>?, (@Sendable () -> Void)?, [Scheduled<Void>]) = state.withLock { state in
                let restored = state.machine.isRestored
                let action = state.machine.attach(resumingAfter: lastSeq)
                guard case .attached = action else { return (action, nil, nil, []) }
                if restored {
                    // Its first resume may have renumbered what it kept: the store gets it anew.
                    state.stored.rewriteAll()
                }
                if case .attached(_, .detached) = action {
                    // The store says whether it is attached (a fleet's nodes read it).
                    state.stored.row = false
                }
                if restored || !state.stored.row { listed = state.stored.list() }
                state.dropTransport = dropTransport
                defer {
                    state.waiter = nil
                    state.push = nil
                    state.pushScheduled = false
                    state.graceTimer = nil
                    state.leaseTimer = nil
                }
                return (action, state.waiter?.continuation, state.push, [state.graceTimer, state.leaseTimer].compactMap { $0 })
            }
        stale?.resume(returning: nil)
        stalePush?()
        for timer in timers { timer.cancel() }
        if listed { journal?.linkChanged(self) }
        guard case .attached(let generation, let previous) = action else { return nil }
        return (generation, previous)
    }

    /// The transport of `generation` is gone: the link detaches (`armGrace` arms the timer for
    /// the end of its grace, after the given delay) or, without a grace, is to end.
    func transportEnded(generation: Int, now: ContinuousClock.Instant = .now, armGrace: (Duration) -> Scheduled<Void>) -> Machine.DetachAction {
        detach(now: now, armGrace: armGrace) { $0.transportEnded(generation: generation, now: now) }
    }

    /// A restored link waits for its client until its grace deadline: `arm` arms the timer
    /// (after the given delay) that ends it.
    func armGrace(now: ContinuousClock.Instant = .now, _ arm: (Duration) -> Scheduled<Void>) {
        let replaced: Scheduled<Void>? = state.withLock { state in
            guard case .detached(let deadline) = state.machine.attachment else { return nil }
            defer { state.graceTimer = arm(deadline - now) }
            return state.graceTimer
        }
        replaced?.cancel()
    }

    /// The lease timer of `generation` fired: detaches the link as `transportEnded` does if that
    /// lease is still on and over.
    func leaseExpired(generation: Int, now: ContinuousClock.Instant = .now, armGrace: (Duration) -> Scheduled<Void>) -> Machine.DetachAction {
        detach(now: now, armGrace: armGrace) { $0.leaseExpired(generation: generation, now: now) }
    }

    private func detach(
        now: ContinuousClock.Instant,
        armGrace: (Duration) -> Scheduled<Void>,
        _ event: (inout Machine) -> Machine.DetachAction
    ) -> Machine.DetachAction {
        var listed = false
        let (action, waiter): (Machine.DetachAction, CheckedContinuation<Event?, Never>?) = state.withLock { state in
            let action = event(&state.machine)
            guard case .detached(let deadline) = action else { return (action, nil) }
            state.stored.row = false
            listed = state.stored.list()
            state.dropTransport = nil
            state.push = nil
            state.leaseTimer?.cancel()
            state.leaseTimer = nil
            state.graceTimer = armGrace(deadline - now)
            defer { state.waiter = nil }
            return (action, state.waiter?.continuation)
        }
        waiter?.resume(returning: nil)
        if listed { journal?.linkChanged(self) }
        return action
    }

    /// Contract §7: the HTTP transport of `generation` keeps the link for the resume grace
    /// with no request waiting; `arm` arms the timer (after the given delay) that ends it.
    func lease(generation: Int, now: ContinuousClock.Instant = .now, arm: (Duration) -> Scheduled<Void>) {
        let replaced: Scheduled<Void>? = state.withLock { state in
            guard let deadline = state.machine.lease(generation: generation, now: now) else { return nil }
            defer { state.leaseTimer = arm(deadline - now) }
            return state.leaseTimer
        }
        replaced?.cancel()
    }

    /// A request of the transport of `generation` waits again: its lease ends.
    func endLease(generation: Int) {
        let timer: Scheduled<Void>? = state.withLock { state in
            state.machine.endLease(generation: generation)
            guard state.machine.leaseUntil == nil else { return nil }
            defer { state.leaseTimer = nil }
            return state.leaseTimer
        }
        timer?.cancel()
    }

    /// Ends the link (with `graceOverAt`, only a detached link whose grace is over then); nil
    /// when it did not end now, else the sessions it took part in (now left).
    func markEnded(graceOverAt now: ContinuousClock.Instant? = nil) -> [Session]? {
        let ended: ([Session], [Scheduled<Void>])? = state.withLock { state in
            guard state.machine.end(graceOverAt: now) else { return nil }
            defer {
                state.sessions.removeAll()
                state.graceTimer = nil
                state.leaseTimer = nil
            }
            return (Array(state.sessions.values), [state.graceTimer, state.leaseTimer].compactMap { $0 })
        }
        for timer in ended?.1 ?? [] { timer.cancel() }
        if ended != nil { noteChanged() }
        return ended?.0
    }

    // MARK: Messages to the client

    /// Queues a message for the client; never waits. Kept while the link is detached;
    /// discarded once it ended. Past the unsent bound, the live transport is dropped.
    func send(_ message: OutboundMessage) {
        send(message, event: nil)
    }

    /// `send`; `event` matters only once the link moved to another node (where its sessions
    /// have copies of their own): it follows the message there.
    func send(_ message: OutboundMessage, event: SessionEvent?) {
        metrics.sent(message.type)
        var listed = false
        var movedTo: RemoteLink?
        let (wake, drop, push): ((CheckedContinuation<Event?, Never>, Event)?, (@Sendable () -> Void)?, (@Sendable () -> Void)?) = state.withLock {
            state in
            switch state.move {
            case nil: break
            case .underway(var waiting):
                waiting.append((message, event))
                state.move = .underway(waiting)
                return (nil, nil, nil)
            case .done(let remote):
                movedTo = remote
                return (nil, nil, nil)
            }
            let action = state.machine.offer { message.text(seq: $0) }
            guard action != .discarded else { return (nil, nil, nil) }
            listed = state.stored.list()
            var drop: (@Sendable () -> Void)?
            if action == .queuedDroppingTransport {
                // Once: the transport is going; the link detaches when it is gone.
                drop = state.dropTransport
                state.dropTransport = nil
            }
            return (Self.takeWaiter(&state), drop, Self.schedulePush(&state))
        }
        if let (continuation, event) = wake { continuation.resume(returning: event) }
        push?()
        drop?()
        movedTo?.send(message, event: event)
        if listed { journal?.linkChanged(self) }
    }

    // MARK: Moving to another node

    /// The link is moving (or moved) to another node.
    var isMoving: Bool { state.withLock { $0.move != nil } }

    /// Starts moving the link to another node (its client resumed there): the transport is
    /// dropped, what is sent from now on waits, and what the link keeps is returned with its
    /// row. Nil when it ended or is already moving.
    func beginMove() -> (record: StoredLink, kept: [StoredMessage])? {
        let taken: (StoredLink, [StoredMessage], (@Sendable () -> Void)?, CheckedContinuation<Event?, Never>?)? = state.withLock { state in
            guard state.move == nil, !state.machine.isEnded else { return nil }
            state.move = .underway([])
            let kept = state.machine.keptFrames(after: 0).frames.map { StoredMessage(seq: $0.seq, text: $0.text) }
            defer {
                state.dropTransport = nil
                state.waiter = nil
                state.push = nil
            }
            return (storedRecord(state), kept, state.dropTransport, state.waiter?.continuation)
        }
        guard let (record, kept, drop, waiter) = taken else { return nil }
        waiter?.resume(returning: nil)
        drop?()
        return (record, kept)
    }

    /// The move did not happen: the link stays, and what waited is sent here.
    func abortMove() {
        let waiting: [(OutboundMessage, SessionEvent?)] = state.withLock { state in
            guard case .underway(let waiting) = state.move else { return [] }
            state.move = nil
            return waiting
        }
        for (message, event) in waiting { send(message, event: event) }
    }

    /// The link is `remote`'s now: this object ends here without a trace in the store, and
    /// whatever is sent to it (what waited first) goes there.
    func finishMove(to remote: RemoteLink) {
        let timers: [Scheduled<Void>] = state.withLock { state in
            guard case .underway(let waiting) = state.move else { return [] }
            state.move = .done(remote)
            // Under the lock: nothing sent from now on overtakes what waited.
            for (message, event) in waiting { remote.send(message, event: event) }
            _ = state.machine.end(graceOverAt: nil)
            state.sessions.removeAll()
            defer {
                state.graceTimer = nil
                state.leaseTimer = nil
            }
            return [state.graceTimer, state.leaseTimer].compactMap { $0 }
        }
        for timer in timers { timer.cancel() }
    }

    /// Passes a message another node queued for this link on to where the link moved; false
    /// when it did not move.
    func forward(_ delivery: RemoteDelivery) -> Bool {
        guard case .done(let remote) = state.withLock({ $0.move }) else { return false }
        remote.forward(delivery)
        return true
    }

    /// Asks the current transport to close once what is queued is written.
    func close(code: UInt16, reason: String) {
        wakeWriter { $0.machine.requestClose(.init(code: code, reason: reason)) }
    }

    // MARK: Reliable sending (contract §11)

    /// A message numbered `cseq` arrives: true when it is new (under way until `finish`),
    /// false for a duplicate (dropped; acked now if it is safe already, else once it is). Once
    /// the link is moving to another node, nothing more is taken here: the node it moves to
    /// drops what was taken before the move and takes the rest, which the client sends again.
    func arrive(cseq: Int) -> Bool {
        var fresh = true
        wakeWriter { state in
            guard state.move == nil else {
                fresh = false
                return false
            }
            fresh = state.machine.client.arrive(cseq)
            return !fresh
        }
        return fresh
    }

    /// The message numbered `cseq` was handled for good: once a store holds what it caused
    /// (`stored(cseq:)`, from the journal) its ack is due; with no store, at once.
    func finish(cseq: Int) {
        guard let journal else {
            wakeWriter { state in
                guard state.machine.client.finish(cseq) else { return false }
                state.machine.client.stored(through: state.machine.client.done)
                return true
            }
            return
        }
        let listed = state.withLock { state in state.machine.client.finish(cseq) && state.stored.list() }
        if listed { journal.linkChanged(self) }
    }

    /// The store holds what the client's messages up to `cseq` caused: their ack is due. It
    /// goes with the next frames the transport writes; true when it still waits (the caller
    /// makes it go with `writeAck` a little later if nothing else took it).
    func stored(cseq: Int) -> Bool {
        state.withLock { state in
            state.machine.client.stored(through: cseq)
            return state.machine.client.ackDue
        }
    }

    /// The ack due, if no frame took it since `stored(cseq:)`, is written on its own now.
    func writeAck() {
        wakeWriter { $0.machine.client.ackDue }
    }

    /// For a resumed link's `hello`: the highest `cseq` acked, which stands for the ack due.
    func announceAck() -> Int {
        state.withLock { state in
            state.machine.client.announced()
            return state.machine.client.safe
        }
    }

    /// Runs `body` under the lock and, when it says so, wakes the writer of the current transport.
    private func wakeWriter(_ body: (inout State) -> Bool) {
        let (wake, push): ((CheckedContinuation<Event?, Never>, Event)?, (@Sendable () -> Void)?) = state.withLock { state in
            guard body(&state) else { return (nil, nil) }
            return (Self.takeWaiter(&state), Self.schedulePush(&state))
        }
        if let (continuation, event) = wake { continuation.resume(returning: event) }
        push?()
    }

    /// The client has processed everything up to `seq`.
    func acknowledge(through seq: Int) {
        let listed = state.withLock { state in
            state.machine.acknowledge(through: seq)
            return state.stored.list()
        }
        if listed { journal?.linkChanged(self) }
    }

    // MARK: The store

    /// Tells the journal the link has something the store lacks (its row, when new).
    func noteChanged() {
        if state.withLock({ $0.move == nil && $0.stored.list() }) { journal?.linkChanged(self) }
    }

    /// Adds the link's kept messages and `cseq` mark to `batch`'s snapshot (see `StoredLinkMarks.snapshot`).
    func snapshot(into batch: inout LiveStateBatch) -> Int {
        state.withLock { state in state.stored.snapshot(state.machine, id: id, into: &batch) }
    }

    /// Adds to `batch` what the store lacks of the link (see `StoredLinkMarks.journal`); the
    /// `cseq` mark it adds, if any (the journal calls `stored(cseq:)` once it is written).
    func journal(into batch: inout LiveStateBatch) -> Int? {
        state.withLock { state in
            // A link that moved is its new node's to write.
            guard state.move == nil else { return nil }
            let record = storedRecord(state)
            return state.stored.journal(state.machine, id: id, into: &batch) { record }
        }
    }

    /// The link's row as the store keeps it.
    var storedRecord: StoredLink { state.withLock { storedRecord($0) } }

    private func storedRecord(_ state: State) -> StoredLink {
        StoredLink(
            id: id,
            tokenHash: tokenHash,
            party: party.rawValue,
            principal: principal,
            tokenValidUntil: state.machine.tokenValidUntil,
            tokenExpiresAt: state.app?.expiresAt,
            tokenDevices: state.app?.devices.map { $0.sorted() },
            attached: state.machine.isAttached,
            // What a node the link moves to drops as duplicates: what was handled here for good.
            // A message still being handled as the move begins (a transport reads on its own
            // thread) counts as not taken: its client sends it again there, and if it got through
            // here too, the receiving client ignores its repeated peer_cseq.
            cseq: state.machine.client.done,
            restoredThrough: state.machine.restoredThrough
        )
    }

    /// The transport of `generation` takes its frames itself, on its own event loop: `drain` is
    /// called (once per batch, from whichever thread offers) and answers with `takePushed`.
    /// When a newer transport replaces it, `drain` is called once more and `takePushed` says so.
    func push(generation: Int, drain: @escaping @Sendable () -> Void) {
        let first: (@Sendable () -> Void)? = state.withLock { state in
            guard state.machine.generation == generation, !state.machine.isEnded || state.machine.writerHasWork else { return nil }
            state.push = drain
            state.pushScheduled = false
            return Self.schedulePush(&state)
        }
        first?()
    }

    /// What the push transport of `generation` is to write: every unsent frame, in order, then
    /// the close when one was asked for. Nil when that transport is no longer the link's.
    func takePushed(generation: Int) -> (frames: [Frame], close: Machine.CloseRequest?)? {
        state.withLock { state in
            guard state.push != nil, case .write(let frames, let close) = state.machine.take(generation: generation, closeWithFrames: true) else {
                return nil
            }
            state.pushScheduled = false
            return (frames, close)
        }
    }

    /// The next thing for the waiting writer of `generation` to do; nil once its transport is
    /// replaced, after its close was delivered, or on cancellation.
    func next(generation: Int) async -> Event? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Event?, Never>) in
                let ready: Event?? = state.withLock { state in
                    if Task.isCancelled || state.machine.generation != generation { return .some(nil) }
                    if let event = Self.takeEvent(&state) { return .some(event) }
                    if state.machine.closeWasDelivered { return .some(nil) }
                    state.waiter = (generation, continuation)
                    return .none
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Event?, Never>? in
                defer { state.waiter = nil }
                return state.waiter?.continuation
            }
            waiter?.resume(returning: nil)
        }
    }

    /// What the writer of `generation` is to do now, without waiting: nil when nothing is ready
    /// (or that transport is no longer the link's).
    func ready(generation: Int) -> Event? {
        state.withLock { state in state.machine.generation == generation ? Self.takeEvent(&state) : nil }
    }

    /// The push transport's drain to call, once until it takes what waits for it.
    private static func schedulePush(_ state: inout State) -> (@Sendable () -> Void)? {
        guard let push = state.push, !state.pushScheduled, state.machine.writerHasWork else { return nil }
        state.pushScheduled = true
        return push
    }

    private static func takeWaiter(_ state: inout State) -> (CheckedContinuation<Event?, Never>, Event)? {
        guard let waiter = state.waiter, waiter.generation == state.machine.generation, let event = takeEvent(&state) else { return nil }
        state.waiter = nil
        return (waiter.continuation, event)
    }

    /// For a waiting writer: the frames first, the close once none is left.
    private static func takeEvent(_ state: inout State) -> Event? {
        guard state.push == nil, state.machine.writerHasWork,
            case .write(let frames, let close) = state.machine.take(generation: state.machine.generation, closeWithFrames: false)
        else { return nil }
        if let close { return .close(code: close.code, reason: close.reason) }
        return frames.isEmpty ? nil : .send(frames)
    }

    /// The link as the directory knows it.
    var record: LinkRecord {
        LinkRecord(address: address, party: party, principal: principal, attached: isAttached)
    }

    // MARK: Sessions

    /// Adds `session` unless the link ended or already takes part in `limit` sessions.
    func join(_ session: Session, limit: Int) -> Bool {
        state.withLock { state in
            guard !state.machine.isEnded, state.sessions.count < limit else { return false }
            state.sessions[session.id] = session
            return true
        }
    }

    func leave(_ session: Session) {
        state.withLock { state in
            if state.sessions[session.id] === session { state.sessions[session.id] = nil }
        }
    }

    /// The session with `id`, only when this link is one of its parties.
    func session(_ id: String) -> Session? {
        state.withLock { $0.sessions[id] }
    }

    var sessions: [Session] { state.withLock { Array($0.sessions.values) } }
}

/// A fresh link's id and resume token (256 random bits, base64url), made before the link when
/// a fleet must know the link first (a device's link claimed fleet-wide before its `hello`).
struct LinkSeed: Sendable {
    let id: String
    let token: String
    let tokenHash: [UInt8]

    init() {
        id = LibCrypto.randomUUID()
        token = Base64URL.encode(LibCrypto.randomBytes(32))
        tokenHash = LibCrypto.sha256(Array(token.utf8))
    }
}

/// WebSocket close codes the relay uses (contract §3.6).
enum RelayCloseCode {
    static let goingAway: UInt16 = 1001
    static let policyViolation: UInt16 = 1008
    static let tokenExpired: UInt16 = 4001
    static let replaced: UInt16 = 4002
}
