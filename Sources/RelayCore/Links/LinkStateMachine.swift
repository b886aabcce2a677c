/// The rules of one link (contract §4): transports attaching and going, the resume grace, the outbox, the rate limit, the app token's expiry.

/// One logical client connection as a pure state machine. Transports (a WebSocket, an event
/// stream, a poll) attach one after another, each as a *generation*: a newer one supersedes the
/// older one's writer, and one that goes away detaches the link for the resume grace, after
/// which it ends. Its outgoing messages are an `OutboxBuffer`; its incoming ones pass a token
/// bucket; an app's token expiry is one rule for every transport.
///
/// new → attached(generation) → detached(until grace deadline) → attached(next generation) … → ended
public struct LinkStateMachine<Instant: InstantProtocol & Sendable>: Sendable where Instant.Duration == Duration {
    public enum Attachment: Sendable, Equatable {
        /// Made, no transport yet.
        case new
        /// A transport serves the link; its writer serves this generation.
        case attached(generation: Int)
        /// No transport; the link ends at this deadline unless one attaches.
        case detached(until: Instant)
        /// Gone for good.
        case ended
    }

    /// A close a transport is to carry out once what is queued is written (a WebSocket close
    /// code and reason; the HTTP transports send them as an event).
    public struct CloseRequest: Sendable, Equatable {
        public var code: UInt16
        public var reason: String

        public init(code: UInt16, reason: String) {
            self.code = code
            self.reason = reason
        }
    }

    public private(set) var attachment = Attachment.new
    @usableFromInline var outbox: OutboxBuffer
    @usableFromInline var rate: TokenBucket<Instant>
    /// The numbers (`cseq`) of the client's messages: duplicates, and the acks due (contract §11).
    public var client: ClientSequence
    /// Bumped by every attach and detach: a writer serves one generation.
    public private(set) var generation = 0
    @usableFromInline var closeRequest: CloseRequest?
    @usableFromInline var closeDelivered = false
    /// The current transport is being dropped (it fell behind); once per generation.
    @usableFromInline var dropping = false
    let resumeGrace: Duration
    /// An app's token is honoured until then (unix seconds, leeway included); nil for devices.
    public private(set) var tokenValidUntil: Double?
    /// Until when the current transport holds the link with no request waiting (an HTTP poll
    /// that answered, a stream not yet writing): contract §7's lease.
    public private(set) var leaseUntil: Instant?

    /// A new link, or (with `detachedUntil`) one restored from a store: detached, waiting for
    /// its client to resume until then.
    public init(
        outbox: OutboxBuffer,
        rate: TokenBucket<Instant>,
        resumeGrace: Duration,
        tokenValidUntil: Double?,
        detachedUntil: Instant? = nil,
        client: ClientSequence = ClientSequence()
    ) {
        self.outbox = outbox
        self.rate = rate
        self.client = client
        self.resumeGrace = resumeGrace
        self.tokenValidUntil = tokenValidUntil
        if let detachedUntil {
            attachment = .detached(until: detachedUntil)
            generation = 1
        }
    }

    @inlinable
    public var isAttached: Bool {
        if case .attached = attachment { return true }
        return false
    }

    @inlinable
    public var isEnded: Bool {
        if case .ended = attachment { return true }
        return false
    }

    // MARK: Transports

    /// What a new transport was before it attached.
    public enum Previous: Sendable, Equatable {
        /// The link is new.
        case none
        /// Another transport served the link; its writer (of this generation) must stop.
        case superseded(generation: Int)
        /// The link was detached: the other parties hear `connected`, the grace timer stops.
        case detached
    }

    public enum AttachAction: Sendable, Equatable {
        /// The link ended, or the replay from `lastSeq` cannot be complete.
        case refused
        case attached(generation: Int, previous: Previous)
    }

    /// A transport attaches: with `lastSeq` (a resume) it first gets every kept message after
    /// it; without, what no transport was handed yet.
    public mutating func attach(resumingAfter lastSeq: Int?) -> AttachAction {
        guard !isEnded, outbox.rewind(resumingAfter: lastSeq) else { return .refused }
        let previous: Previous
        switch attachment {
        case .new, .ended: previous = .none
        case .attached(let old): previous = .superseded(generation: old)
        case .detached: previous = .detached
        }
        generation += 1
        attachment = .attached(generation: generation)
        leaseUntil = nil
        closeRequest = nil
        closeDelivered = false
        dropping = false
        return .attached(generation: generation, previous: previous)
    }

    public enum DetachAction: Sendable, Equatable {
        /// That transport was no longer the link's.
        case none
        /// The link is detached until this deadline (tell the other parties `reconnecting`).
        case detached(until: Instant)
        /// No grace: end the link now.
        case end
    }

    /// The transport of `generation` is gone.
    public mutating func transportEnded(generation ended: Int, now: Instant) -> DetachAction {
        guard case .attached(let current) = attachment, current == ended else { return .none }
        guard resumeGrace > .zero else { return .end }
        let deadline = now.advanced(by: resumeGrace)
        generation += 1
        attachment = .detached(until: deadline)
        leaseUntil = nil
        return .detached(until: deadline)
    }

    // MARK: The HTTP lease

    /// The HTTP transport of `generation` holds the link for the resume grace although no
    /// request of it waits (its poll answered): the deadline to arm a timer for, nil when that
    /// transport is no longer the link's. A poll or stream that comes meanwhile attaches and
    /// ends the lease.
    public mutating func lease(generation leased: Int, now: Instant) -> Instant? {
        guard attachment == .attached(generation: leased) else { return nil }
        let deadline = now.advanced(by: resumeGrace)
        leaseUntil = deadline
        return deadline
    }

    /// A request of the transport of `generation` waits again (its stream writes): no lease.
    public mutating func endLease(generation leased: Int) {
        guard attachment == .attached(generation: leased) else { return }
        leaseUntil = nil
    }

    /// The lease timer of `generation` fired at `now`: if the lease is still that transport's
    /// and is over, the transport is lost, exactly as when a socket drops.
    public mutating func leaseExpired(generation leased: Int, now: Instant) -> DetachAction {
        guard attachment == .attached(generation: leased), let leaseUntil, leaseUntil <= now else { return .none }
        return transportEnded(generation: leased, now: now)
    }

    /// Whether a detached link's grace is over at `now` (its timer fired; the caller ends it
    /// with `end(graceOverAt:)`).
    public func graceIsOver(at now: Instant) -> Bool {
        guard case .detached(let deadline) = attachment else { return false }
        return deadline <= now
    }

    /// Ends the link: nothing more is taken. A live transport still writes what it has not
    /// written yet (the last messages, such as its sessions' `webrtc_close`), then its close.
    /// With `graceOverAt`, only a detached link whose grace is over at that instant ends (a
    /// transport may have come back as the timer fired). False when it did not end now.
    public mutating func end(graceOverAt now: Instant? = nil) -> Bool {
        if let now, !graceIsOver(at: now) { return false }
        switch attachment {
        case .ended:
            return false
        case .attached:
            outbox.dropSent()
        case .new, .detached:
            outbox.removeAll()
        }
        attachment = .ended
        return true
    }

    // MARK: Messages to the client

    public enum OfferAction: Sendable, Equatable {
        /// The link ended: the message goes nowhere.
        case discarded
        /// Kept and numbered; wake the writer.
        case queued
        /// Kept, but the transport has fallen too far behind: drop it (the link detaches).
        case queuedDroppingTransport
    }

    /// Numbers a message with the link's next `seq` (`text` makes its frame) and keeps it.
    @inlinable
    public mutating func offer(_ text: (Int) -> String) -> OfferAction {
        // Pattern matching rather than `==`: it stays inlined in the caller (the hot path).
        if case .ended = attachment { return .discarded }
        let overBound = outbox.append(text)
        guard overBound, case .attached = attachment, !dropping else { return .queued }
        dropping = true
        return .queuedDroppingTransport
    }

    /// The client has processed everything up to `seq`.
    @inlinable
    public mutating func acknowledge(through seq: Int) {
        outbox.acknowledge(through: seq)
    }

    /// Asks the current transport to close once what is queued is written; the first request
    /// wins. False when one was already made.
    public mutating func requestClose(_ request: CloseRequest) -> Bool {
        guard closeRequest == nil else { return false }
        closeRequest = request
        return true
    }

    /// The kept messages after `seq` (for a store), and the oldest kept seq: everything
    /// before it is acked or dropped.
    public func keptFrames(after seq: Int) -> (frames: [OutboxBuffer.Frame], firstKept: Int) {
        (outbox.keptFrames(after: seq), outbox.firstKeptSeq)
    }

    /// The seq the next message will get.
    public var upcomingSeq: Int { outbox.upcomingSeq }

    /// Restored from a store and not attached since.
    public var isRestored: Bool { outbox.storedThrough != nil }

    /// See `OutboxBuffer.restoredThrough`.
    public var restoredThrough: Int? { outbox.restoredThrough }

    /// Whether the writer of the current transport has something to take.
    @inlinable
    public var writerHasWork: Bool {
        outbox.hasUnsent || client.ackDue || (closeRequest != nil && !closeDelivered)
    }

    /// Whether the close was asked for and handed to the writer.
    public var closeWasDelivered: Bool { closeDelivered }

    public enum Take: Sendable, Equatable {
        /// A newer transport has the link (or it detached): this writer stops.
        case superseded
        /// Frames to write in order, then the close when there is one. An `ack` due comes
        /// last, unnumbered (seq 0): it is never kept nor replayed (a newer one supersedes it).
        case write([OutboxBuffer.Frame], close: CloseRequest?)
    }

    /// What the writer of `generation` is to write now. With `closeWithFrames`, the close comes
    /// with the last frames (a socket writes both in one go); without, only once no frame is
    /// left (a poll answers frames, and the close at the next poll).
    @inlinable
    public mutating func take(generation writer: Int, closeWithFrames: Bool) -> Take {
        guard writer == generation else { return .superseded }
        switch attachment {
        case .attached(let current) where current == writer: break
        case .ended: break
        default: return .superseded
        }
        var frames = outbox.takeUnsent()
        if let ack = client.takeAck() { frames.append(OutboxBuffer.Frame(seq: 0, text: Self.ackText(ack))) }
        guard let request = closeRequest, !closeDelivered, closeWithFrames || frames.isEmpty else { return .write(frames, close: nil) }
        closeDelivered = true
        return .write(frames, close: request)
    }

    /// The text of the relay's `ack` of every client message up to `cseq`.
    public static func ackText(_ cseq: Int) -> String {
        "{\"type\":\"ack\",\"cseq\":\(cseq)}"
    }

    // MARK: Messages from the client

    /// Contract §5: a token of the link's message budget. Whether the message may pass, and
    /// how many were refused in a row (0 when it passes).
    @inlinable
    public mutating func admitMessage(now: Instant) -> (allowed: Bool, refusedInARow: Int) {
        let allowed = rate.take(now: now)
        return (allowed, rate.refusedInARow)
    }

    // MARK: The app's token

    /// A fresh token (`auth`, or a resume with a new token) moves the expiry.
    public mutating func tokenRefreshed(validUntil: Double) {
        tokenValidUntil = validUntil
    }

    /// Contract §1.1, for every transport: past this, an app link's transport closes with 4001.
    public func tokenHasExpired(at wallClock: Double) -> Bool {
        guard let tokenValidUntil else { return false }
        return tokenValidUntil < wallClock
    }
}
