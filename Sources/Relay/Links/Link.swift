import DeviceAuth
import Foundation
import RelayCore
import OpenSSLCrypto
import Synchronization

/// Who is at the other end of a link.
public enum Party: String, Sendable {
    case app
    case device

    /// The party as the closer of a session it ends.
    var closer: SessionCloser {
        switch self {
        case .app: .app
        case .device: .device
        }
    }
}

/// One logical client connection (contract §4): an identity, the link's own `seq` numbering and
/// kept messages (its `Outbox`), and the sessions it takes part in. Transports (WebSockets)
/// attach to it one after another: when one drops, the link is detached for the resume grace
/// and a new transport can resume it without losing a message.
public final class Link: Sendable {
    public let id: String
    /// 256 random bits, base64url; proves a resume comes from whoever got this link's `hello`.
    public let resumeToken: String
    public let party: Party
    /// The user id for an app, the device id for a device.
    public let principal: String
    let outbox: Outbox
    private let metrics: RelayMetrics

    enum Attachment: Sendable {
        /// Made, no transport yet.
        case new
        /// A transport serves the link; its writer is of this outbox generation.
        case attached(generation: Int)
        /// No transport since this moment; the grace timer runs.
        case detached(since: ContinuousClock.Instant, grace: Task<Void, Never>?)
        /// Gone for good.
        case ended
    }

    private struct State {
        var app: AppIdentity?
        var sessions: [String: Session] = [:]
        /// Device ids this (app) link watches (contract §8).
        var watched: Set<String> = []
        var attachment = Attachment.new
        var rate: TokenBucket
    }

    private let state: Mutex<State>

    init(party: Party, principal: String, app: AppIdentity?, outbox: Outbox, rate: TokenBucket, metrics: RelayMetrics) {
        self.metrics = metrics
        self.id = UUID().uuidString.lowercased()
        self.resumeToken = Base64URL.encode(LibCrypto.randomBytes(32))
        self.party = party
        self.principal = principal
        self.outbox = outbox
        self.state = Mutex(State(app: app, rate: rate))
    }

    /// The app's current token identity (nil for devices).
    var appIdentity: AppIdentity? { state.withLock { $0.app } }

    func replaceAppIdentity(_ identity: AppIdentity) {
        state.withLock { $0.app = identity }
    }

    /// Constant-time check of a presented resume token.
    func accepts(resumeToken presented: String) -> Bool {
        LibCrypto.constantTimeEquals(Array(resumeToken.utf8), Array(presented.utf8))
    }

    /// Queues a message for the client; never waits. Kept while the link is detached.
    func send(_ message: OutboundMessage) {
        metrics.sent(message.type)
        outbox.offer(message)
    }

    /// Replaces the set of watched devices; returns the previous one.
    func replaceWatched(with deviceIDs: Set<String>) -> Set<String> {
        state.withLock { state in
            defer { state.watched = deviceIDs }
            return state.watched
        }
    }

    /// Spends a token of the link's message budget: whether the message may pass, and how many
    /// were refused in a row (0 when it passes).
    func takeMessageToken(now: ContinuousClock.Instant = .now) -> (allowed: Bool, refusedInARow: Int) {
        state.withLock { state in
            let allowed = state.rate.take(now: now)
            return (allowed, state.rate.refusedInARow)
        }
    }

    // MARK: Attachment

    var attachment: Attachment { state.withLock { $0.attachment } }

    var isEnded: Bool {
        if case .ended = attachment { return true }
        return false
    }

    /// Records a new transport. False when the link ended meanwhile (its grace ran out as the
    /// client came back); else returns the grace timer it makes unnecessary.
    func markAttached(generation: Int) -> (attached: Bool, grace: Task<Void, Never>?) {
        state.withLock { state in
            var grace: Task<Void, Never>?
            switch state.attachment {
            case .ended: return (false, nil)
            case .detached(_, let timer): grace = timer
            case .new, .attached: break
            }
            state.attachment = .attached(generation: generation)
            return (true, grace)
        }
    }

    /// Detaches the transport of `generation`, if it is still the current one.
    func markDetached(generation: Int, grace: () -> Task<Void, Never>?) -> Bool {
        state.withLock { state in
            guard case .attached(let current) = state.attachment, current == generation else { return false }
            state.attachment = .detached(since: .now, grace: grace())
            return true
        }
    }

    /// Ends the link (only when detached, with `onlyIfDetached`); `ended` is false when it had
    /// already ended or was not detached. Returns its sessions (now left) and its grace timer.
    func markEnded(onlyIfDetached: Bool = false) -> (ended: Bool, sessions: [Session], grace: Task<Void, Never>?) {
        state.withLock { state in
            var grace: Task<Void, Never>?
            switch state.attachment {
            case .ended: return (false, [], nil)
            case .detached(_, let timer): grace = timer
            case .new, .attached: if onlyIfDetached { return (false, [], nil) }
            }
            state.attachment = .ended
            defer { state.sessions.removeAll() }
            return (true, Array(state.sessions.values), grace)
        }
    }

    var isAttached: Bool {
        if case .attached = attachment { return true }
        return false
    }

    // MARK: Sessions

    /// Adds `session` unless the link ended or already takes part in `limit` sessions.
    func join(_ session: Session, limit: Int) -> Bool {
        state.withLock { state in
            if case .ended = state.attachment { return false }
            guard state.sessions.count < limit else { return false }
            state.sessions[session.id] = session
            return true
        }
    }

    func leave(_ session: Session) {
        _ = state.withLock { $0.sessions.removeValue(forKey: session.id) }
    }

    /// The session with `id`, only when this link is one of its parties.
    func session(_ id: String) -> Session? {
        state.withLock { $0.sessions[id] }
    }

    var sessions: [Session] { state.withLock { Array($0.sessions.values) } }

}
