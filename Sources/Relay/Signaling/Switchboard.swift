/// The relay's signaling core: the switchboard every transport hands its links' messages to, and where each message goes.
import DeviceAuth
import Foundation
import Logging
import NIOCore
import NIOPosix
import Registry
import RelayCore
import Synchronization
import TURNBroker

/// The relay's signaling logic: admits links, sets sessions up, routes what one party of a
/// session sends to the other, and ends sessions. It owns no socket and never waits on one.
final class Switchboard: Sendable {
    struct Limits: Sendable {
        var maxSessionsPerDevice: Int
        var maxSessionsPerApp: Int
        var keptMessages: Int
        var keptBytes: Int
        var rateBurst: Int
        var ratePerSecond: Double
        /// Messages refused in a row before the socket closes with 1008.
        var maxRefusedInARow: Int
        var resumeGrace: Duration
        var setupTimeout: Duration
        /// How long past `exp` an app's token is honoured.
        var tokenLeeway: Double
    }

    let table: any SessionTable
    let turn: any TURNProvider
    let directory: any DeviceDirectory
    let tokens: AppTokenVerifier
    let limits: Limits
    /// Audit events and device sightings, written to the store in batches.
    let journal: StoreWriter
    /// The live links and sessions, written behind so the next process takes them over.
    let liveState: LiveStateJournal?
    /// Set once a graceful shutdown began: no new link is taken (`/readyz` says so too).
    let draining = Atomic<Bool>(false)
    var isDraining: Bool { draining.load(ordering: .relaxed) }
    let presence = PresenceBoard()
    let metrics: RelayMetrics
    /// How long after minting a session's credentials (of the given ttl) to mint fresh ones.
    let refreshDelay: @Sendable (Int) -> Duration
    /// Where work off a caller's path runs (ICE servers being minted, credentials revoked).
    let errands: Errands
    let logger: Logger

    init(
        table: any SessionTable,
        turn: any TURNProvider,
        directory: any DeviceDirectory,
        tokens: AppTokenVerifier,
        limits: Limits,
        journal: StoreWriter,
        liveState: LiveStateJournal?,
        metrics: RelayMetrics,
        refreshDelay: @escaping @Sendable (Int) -> Duration,
        errands: Errands,
        logger: Logger
    ) {
        self.errands = errands
        self.journal = journal
        self.liveState = liveState
        self.metrics = metrics
        self.table = table
        self.turn = turn
        self.directory = directory
        self.tokens = tokens
        self.limits = limits
        self.refreshDelay = refreshDelay
        self.logger = logger
    }

    // MARK: Messages

    /// What became of a message: refused by the rate limit, handled, or handled in part with
    /// the rest of its work still to await.
    enum Reception: Sendable {
        case refused
        case handled
        /// Work that must finish before the link's next message is taken, so messages keep
        /// their order (a watch's registry reads).
        case pending(@Sendable () async -> Void)
        /// Work that runs beside the link's next messages (a session request waiting for its
        /// ICE servers: nothing the link sends next can be about that session, and a slow TURN
        /// provider must not hold up the link's other sessions).
        case alongside(@Sendable () async -> Void)
    }

    /// Handles one text frame from `link` without waiting on anything slow; errors go back on
    /// the link, which stays open.
    func receive(text: String, from link: Link) -> Reception {
        receive(from: link) { () throws(SignalingError) in try ClientEnvelope(text: text) }
    }

    /// Handles one message an HTTP request carried (decoded once, with the request's body).
    func receive(message: JSONValue, from link: Link) -> Reception {
        receive(from: link) { () throws(SignalingError) in try ClientEnvelope(value: message) }
    }

    /// Every message, whatever carried it: the link's rate limit, then the message's route.
    @inline(__always)
    private func receive(from link: Link, decode: () throws(SignalingError) -> ClientEnvelope) -> Reception {
        guard admitMessage(from: link) else {
            // A numbered message refused is handled for good too: its error is on the link.
            if let cseq = (try? decode())?.cseq, link.arrive(cseq: cseq) { link.finish(cseq: cseq) }
            return .refused
        }
        let envelope: ClientEnvelope
        do {
            envelope = try decode()
        } catch {
            metrics.received("invalid")
            link.send(error.outbound)
            return .handled
        }
        metrics.received(envelope.message.type)
        guard let cseq = envelope.cseq else { return routeReportingErrors(envelope, from: link) }
        // Contract §11: a number taken before is a duplicate (a client re-sending after a
        // resume what was not acked yet): dropped, and acked.
        guard link.arrive(cseq: cseq) else {
            metrics.duplicateDropped()
            return .handled
        }
        switch routeReportingErrors(envelope, from: link) {
        case .refused, .handled:
            link.finish(cseq: cseq)
            return .handled
        case .pending(let work):
            return .pending {
                await work()
                link.finish(cseq: cseq)
            }
        case .alongside(let work):
            return .alongside {
                await work()
                link.finish(cseq: cseq)
            }
        }
    }

    @inline(__always)
    private func routeReportingErrors(_ envelope: ClientEnvelope, from link: Link) -> Reception {
        do {
            return try route(envelope, from: link)
        } catch {
            // A numbered message handled as its link began moving to another node (its sessions
            // went with it) is not answered here: its client sends it again there.
            if envelope.cseq == nil || !link.isMoving { link.send(error.outbound) }
            return .handled
        }
    }

    /// `receive`, then whatever it left to await. Returns false when the rate limit refused it.
    @discardableResult
    func handle(message: JSONValue, from link: Link) async -> Bool {
        switch receive(message: message, from: link) {
        case .refused: return false
        case .handled: return true
        case .pending(let work):
            await work()
            return true
        case .alongside(let work):
            errands.run(work)
            return true
        }
    }

    func handleBinary(from link: Link) {
        guard admitMessage(from: link) else { return }
        metrics.received("invalid")
        link.send(SignalingError(.badRequest, "Messages must be JSON in text frames").outbound)
    }

    /// Contract §5: a token bucket per link. Over it the message is dropped with `rate_limited`;
    /// after `maxRefusedInARow` drops in a row the socket closes with 1008.
    func admitMessage(from link: Link) -> Bool {
        let (allowed, refused) = link.takeMessageToken()
        if allowed { return true }
        metrics.rateLimited()
        if refused >= limits.maxRefusedInARow {
            link.close(code: RelayCloseCode.policyViolation, reason: "Too many messages")
        } else {
            link.send(SignalingError(.rateLimited, "Too many messages; this one was dropped").outbound)
        }
        return false
    }

    /// Where each message goes: the one place that says which messages wait on something slow
    /// (the TURN provider, the registry) and which are handled at once.
    func route(_ envelope: ClientEnvelope, from link: Link) throws(SignalingError) -> Reception {
        let requestID = envelope.requestID
        switch envelope.message {
        case .webrtcRequest(let deviceID, let ttl, let metadata):
            return .alongside(reportingErrors(to: link) { [self] () async throws(SignalingError) in
                try await openSession(deviceID: deviceID, ttl: ttl, metadata: metadata, from: link, requestID: requestID)
            })

        case .watch(let deviceIDs):
            return .pending(reportingErrors(to: link) { [self] () async throws(SignalingError) in
                try await watch(deviceIDs, from: link, requestID: requestID)
            })

        case .negotiation(let type, let sessionID, let fields):
            let session = try openSession(sessionID, of: link, requestID: requestID)
            // Marked before it is forwarded: the peer may hang up the moment it has the answer,
            // on another event loop, and the session must already count as answered then.
            let answer = type == "webrtc_answer"
            if answer, session.markAnswered() { answered(session) }
            // The peer's node, if it is another, counts the session answered too.
            session.peer(of: link)?.send(OutboundMessage(type, fields: fields), event: answer ? .answered(sessionID: session.id) : nil)

        case .close(let sessionID, let reason):
            let session = try openSession(sessionID, of: link, requestID: requestID)
            close(session, reason: SessionCloseReason(rawValue: reason), by: link.party.closer)

        case .reject(let sessionID, let reason):
            guard link.party == .device else {
                throw SignalingError(
                    .badRequest,
                    "webrtc_reject is for devices; apps end a session with webrtc_close",
                    sessionID: sessionID,
                    requestID: requestID
                )
            }
            let session = try openSession(sessionID, of: link, requestID: requestID)
            close(session, reason: .rejected, by: .device, detail: reason)

        case .ping:
            link.send(ServerMessage.pong(requestID: requestID).outbound)

        case .ack(let seq):
            link.acknowledge(through: seq)

        case .auth(let token):
            try refreshToken(token, on: link, requestID: requestID)

        case .deviceInfo(let capabilities):
            guard link.party == .device else { throw SignalingError(.badRequest, "device_info is for devices", requestID: requestID) }
            presence.describe(link.principal, capabilities: capabilities)
            // Kept where every node reads presence before the link's next message is taken.
            return .pending { [table, logger] in
                do throws(StoreError) {
                    try await table.describe(deviceID: link.principal, linkID: link.id, capabilities: capabilities)
                } catch {
                    logger.warning("Recording a device's capabilities failed", metadata: ["device.id": "\(link.principal)", "error": "\(error)"])
                }
            }

        case .controlAcquire, .controlRenew, .controlRelease, .control, .estop, .estopAck, .estopClear:
            // Contract §12 is read (`ControlLeaseMachine`, `ControlLedger`) but not yet served:
            // until the lease is wired here, these are answered as before it existed.
            throw SignalingError(.badRequest, "Unknown message type '\(envelope.message.type)'", requestID: requestID)
        }
        return .handled
    }

    /// `work` with its error sent back on the link.
    func reportingErrors(to link: Link, _ work: @escaping @Sendable () async throws(SignalingError) -> Void) -> @Sendable () async -> Void {
        {
            do throws(SignalingError) {
                try await work()
            } catch {
                link.send(error.outbound)
            }
        }
    }

    /// `auth`: a fresh token for the same user keeps an app link authorized.
    func refreshToken(_ token: String, on link: Link, requestID: String?) throws(SignalingError) {
        guard link.party == .app, let current = link.appIdentity else {
            throw SignalingError(.badRequest, "auth is for apps", requestID: requestID)
        }
        let identity: AppIdentity
        do {
            identity = try tokens.verify(token, now: Date().timeIntervalSince1970)
        } catch {
            throw SignalingError(.unauthorized, error.detail, requestID: requestID)
        }
        guard identity.userID == current.userID else {
            throw SignalingError(.unauthorized, "The new token is for another user", requestID: requestID)
        }
        link.replaceAppIdentity(identity, validUntil: identity.expiresAt + limits.tokenLeeway)
    }
}
