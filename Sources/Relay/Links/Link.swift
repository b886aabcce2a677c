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

    /// Internal only for the link's own extension in `Link+Transport.swift`.
    struct State {
        var machine: Machine
        /// The resume token; a restored link learns it from the client that resumes it.
        var resumeToken: String?
        var app: AppIdentity?
        var stored = StoredLinkMarks()
        var sessions: [String: Session] = [:]
        /// Device ids this (app) link watches (contract §8).
        var watched: Set<String> = []
        /// The current transport's writer and the grace and lease timers.
        var hooks = LinkHooks()
        /// Whether the link moves (or moved) to another node: what is sent to it meanwhile
        /// waits, then follows it.
        var relocation = LinkRelocation<(OutboundMessage, SessionEvent?), RemoteLink>.staying
    }

    let state: Mutex<State>

    /// A fresh link, named by `seed`.
    convenience init(
        node: NodeID,
        seed: LinkSeed = LinkSeed(),
        party: Party,
        principal: String,
        app: AppIdentity?,
        machine: Machine,
        metrics: RelayMetrics,
        journal: LiveStateJournal?
    ) {
        let state = State(machine: machine, resumeToken: seed.token, app: app)
        self.init(node: node, id: seed.id, tokenHash: seed.tokenHash, party: party, principal: principal, state: state, metrics: metrics, journal: journal)
    }

    /// A link a previous process left in the store: detached (`machine`), its row and kept
    /// messages already stored.
    convenience init(
        node: NodeID,
        restoring stored: StoredLink,
        party: Party,
        app: AppIdentity?,
        machine: Machine,
        metrics: RelayMetrics,
        journal: LiveStateJournal?
    ) {
        var state = State(machine: machine, resumeToken: nil, app: app)
        state.stored = StoredLinkMarks(restored: machine)
        // The row says it was restored (and where its store's messages ended then): a node it
        // moves to, or that takes it over, renumbers from there on its first resume.
        state.stored.row = stored.restoredThrough == machine.restoredThrough
        self.init(
            node: node, id: stored.id, tokenHash: stored.tokenHash, party: party, principal: stored.principal, state: state, metrics: metrics,
            journal: journal
        )
    }

    private init(
        node: NodeID, id: String, tokenHash: [UInt8], party: Party, principal: String, state: State, metrics: RelayMetrics, journal: LiveStateJournal?
    ) {
        self.id = id
        self.address = LinkAddress(node: node, linkID: id)
        self.tokenHash = tokenHash
        self.party = party
        self.principal = principal
        self.metrics = metrics
        self.journal = journal
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
        change { state, effects in
            state.app = identity
            state.machine.tokenRefreshed(validUntil: validUntil)
            state.stored.row = false
            effects.journal = state.stored.list()
        }
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

    /// Ends the link (with `graceOverAt`, only a detached link whose grace is over then); nil
    /// when it did not end now, else the sessions it took part in (now left).
    func markEnded(graceOverAt now: ContinuousClock.Instant? = nil) -> [Session]? {
        let ended: [Session]? = change { state, effects in
            guard state.machine.end(graceOverAt: now) else { return nil }
            defer { state.sessions.removeAll() }
            state.hooks.stopTimers(into: &effects)
            return Array(state.sessions.values)
        }
        if ended != nil { noteChanged() }
        return ended
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
        let moved: RemoteLink? = change { state, effects in
            if state.relocation.isMoving {
                switch state.relocation.offer((message, event)) {
                case .here: break
                case .held: return nil
                case .follow(let remote): return remote
                }
            }
            let action = state.machine.offer { message.text(seq: $0) }
            guard action != .discarded else { return nil }
            effects.journal = state.stored.list()
            if action == .queuedDroppingTransport { state.hooks.dropTransport(into: &effects) }
            state.hooks.wake(&state.machine, into: &effects)
            return nil
        }
        moved?.send(message, event: event)
    }

    // MARK: Moving to another node

    /// The link is moving (or moved) to another node.
    var isMoving: Bool { state.withLock { $0.relocation.isMoving } }

    /// Starts moving the link to another node (its client resumed there): the transport is
    /// dropped, what is sent from now on waits, and what the link keeps is returned with its
    /// row. Nil when it ended or is already moving.
    func beginMove() -> (record: StoredLink, kept: [StoredMessage])? {
        change { state, effects in
            guard !state.machine.isEnded, state.relocation.begin() else { return nil }
            state.hooks.abandon(into: &effects)
            let kept = state.machine.keptFrames(after: 0).frames.map { StoredMessage(seq: $0.seq, text: $0.text) }
            return (storedRecord(state), kept)
        }
    }

    /// The move did not happen: the link stays, and what waited is sent here.
    func abortMove() {
        let waiting = state.withLock { $0.relocation.abort() }
        for (message, event) in waiting { send(message, event: event) }
    }

    /// The link is `remote`'s now: this object ends here without a trace in the store, and
    /// whatever is sent to it (what waited first) goes there.
    func finishMove(to remote: RemoteLink) {
        change { state, effects in
            guard let waiting = state.relocation.finish(at: remote) else { return }
            // Under the lock: nothing sent from now on overtakes what waited.
            for (message, event) in waiting { remote.send(message, event: event) }
            _ = state.machine.end(graceOverAt: nil)
            state.sessions.removeAll()
            state.hooks.stopTimers(into: &effects)
        }
    }

    /// Passes a message another node queued for this link on to where the link moved; false
    /// when it did not move.
    func forward(_ delivery: RemoteDelivery) -> Bool {
        guard let remote = state.withLock({ $0.relocation.destination }) else { return false }
        remote.forward(delivery)
        return true
    }

    // MARK: Reliable sending (contract §11)

    /// A message numbered `cseq` arrives: true when it is new (under way until `finish`),
    /// false for a duplicate (dropped; acked now if it is safe already, else once it is). Once
    /// the link is moving to another node, nothing more is taken here: the node it moves to
    /// drops what was taken before the move and takes the rest, which the client sends again.
    func arrive(cseq: Int) -> Bool {
        var fresh = true
        wakeWriter { state in
            guard !state.relocation.isMoving else {
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
        guard journal != nil else {
            wakeWriter { state in
                guard state.machine.client.finish(cseq) else { return false }
                state.machine.client.stored(through: state.machine.client.done)
                return true
            }
            return
        }
        change { state, effects in effects.journal = state.machine.client.finish(cseq) && state.stored.list() }
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
    func wakeWriter(_ body: (inout State) -> Bool) {
        change { state, effects in
            if body(&state) { state.hooks.wake(&state.machine, into: &effects) }
        }
    }

    /// Runs `body` under the lock, then does what it decided there.
    func change<Result: Sendable>(_ body: (inout State, inout LinkEffects) -> Result) -> Result {
        var effects = LinkEffects()
        let result = state.withLock { body(&$0, &effects) }
        if let (continuation, event) = effects.resume { continuation.resume(returning: event) }
        effects.drain?()
        effects.drop?()
        for timer in effects.cancel { timer.cancel() }
        if effects.journal { journal?.linkChanged(self) }
        return result
    }

    /// The client has processed everything up to `seq`.
    func acknowledge(through seq: Int) {
        change { state, effects in
            state.machine.acknowledge(through: seq)
            effects.journal = state.stored.list()
        }
    }

    // MARK: The store

    /// Tells the journal the link has something the store lacks (its row, when new).
    func noteChanged() {
        change { state, effects in effects.journal = !state.relocation.isMoving && state.stored.list() }
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
            guard !state.relocation.isMoving else { return nil }
            let record = storedRecord(state)
            return state.stored.journal(state.machine, id: id, into: &batch) { record }
        }
    }

    /// The link's row as the store keeps it.
    var storedRecord: StoredLink { state.withLock { storedRecord($0) } }

    func storedRecord(_ state: State) -> StoredLink {
        StoredLink(id: id, tokenHash: tokenHash, party: party, principal: principal, machine: state.machine, app: state.app)
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
