import DeviceAuth
import Foundation
import Logging
import NIOCore
import NIOPosix
import Registry
import RelayCore
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
    let presence = PresenceBoard()
    let metrics: RelayMetrics
    /// How long after minting a session's credentials (of the given ttl) to mint fresh ones.
    let refreshDelay: @Sendable (Int) -> Duration
    let logger: Logger

    init(
        table: any SessionTable,
        turn: any TURNProvider,
        directory: any DeviceDirectory,
        tokens: AppTokenVerifier,
        limits: Limits,
        journal: StoreWriter,
        metrics: RelayMetrics,
        refreshDelay: @escaping @Sendable (Int) -> Duration,
        logger: Logger
    ) {
        self.journal = journal
        self.metrics = metrics
        self.table = table
        self.turn = turn
        self.directory = directory
        self.tokens = tokens
        self.limits = limits
        self.refreshDelay = refreshDelay
        self.logger = logger
    }

    // MARK: Links

    /// A transport admitted onto a link.
    struct Admission: Sendable {
        var link: Link
        /// The link's generation the transport's writer serves.
        var generation: Int
        var resumed: Bool
    }

    /// Admits a new transport: onto the client's detached link when it resumes with that link's
    /// token and the replay can be complete, else onto a fresh link. A device's fresh link ends
    /// its older link (close 4002 on a socket still open).
    func admit(_ identity: ClientIdentity, resume: (token: String, lastSeq: Int)?, dropTransport: @escaping @Sendable () -> Void) -> Admission {
        let party: Party
        let principal: String
        var app: AppIdentity?
        switch identity {
        case .app(let identity):
            (party, principal, app) = (.app, identity.userID, identity)
        case .device(let record):
            (party, principal) = (.device, record.deviceID)
        }
        if let resume, let link = table.links(of: party, principal: principal).first(where: { $0.accepts(resumeToken: resume.token) }) {
            if let generation = attachTransport(to: link, resumingAfter: resume.lastSeq, dropTransport: dropTransport) {
                if let app { link.replaceAppIdentity(app, validUntil: app.expiresAt + limits.tokenLeeway) }
                logger.info("Link resumed", metadata: ["link.id": "\(link.id)", "link.party": "\(party.rawValue)"])
                return Admission(link: link, generation: generation, resumed: true)
            }
            // The replay cannot be complete: this link is over; the client starts afresh.
            logger.info("Link cannot be resumed; starting a fresh one", metadata: ["link.id": "\(link.id)"])
            end(link)
        }
        let link = Link(
            party: party,
            principal: principal,
            app: app,
            machine: Link.Machine(
                outbox: OutboxBuffer(maxMessages: limits.keptMessages, maxBytes: limits.keptBytes),
                rate: TokenBucket(burst: limits.rateBurst, perSecond: limits.ratePerSecond),
                resumeGrace: limits.resumeGrace,
                tokenValidUntil: app.map { $0.expiresAt + limits.tokenLeeway }
            ),
            metrics: metrics
        )
        let generation = link.attach(resumingAfter: nil, dropTransport: dropTransport)!.generation
        if let replaced = table.register(link) {
            logger.info("Device connected again; replacing its older link", metadata: ["device.id": "\(principal)", "link.id": "\(replaced.id)"])
            replaced.close(code: RelayCloseCode.replaced, reason: "Replaced by a newer connection")
            end(replaced)
        }
        deviceSeen(link)
        logger.debug("Link attached", metadata: ["link.id": "\(link.id)", "link.party": "\(party.rawValue)"])
        return Admission(link: link, generation: generation, resumed: false)
    }

    /// Attaches a new transport to an existing link (a resume, or the next poll or event stream
    /// of an HTTP link): it supersedes the previous transport, gets every kept message after
    /// `lastSeq` (nil: after what was already handed out), and the other parties hear
    /// `connected` if the link was detached. Nil when the link ended or the replay cannot be
    /// complete.
    func attachTransport(to link: Link, resumingAfter lastSeq: Int?, dropTransport: @escaping @Sendable () -> Void) -> Int? {
        guard let (generation, previous) = link.attach(resumingAfter: lastSeq, dropTransport: dropTransport) else { return nil }
        if previous == .detached {
            announce(link, status: "connected")
            deviceSeen(link)
        }
        return generation
    }

    /// The transport of `generation` is gone. The link detaches for the resume grace (its
    /// messages are kept; the other parties hear `reconnecting`), then ends.
    func transportEnded(_ link: Link, generation: Int) {
        let action = link.transportEnded(generation: generation) { delay in
            Self.timers.scheduleTask(in: TimeAmount(delay)) { [weak self] in self?.end(link, graceOverAt: .now) }
        }
        switch action {
        case .none:
            return
        case .end:
            end(link)
        case .detached:
            announce(link, status: "reconnecting")
            deviceSeen(link)
            logger.debug("Link detached", metadata: ["link.id": "\(link.id)", "link.party": "\(link.party.rawValue)"])
        }
    }

    /// Ends a link for good (with `graceOverAt`, only a detached link whose grace is over):
    /// its sessions close with `peer_disconnected`.
    func end(_ link: Link, graceOverAt now: ContinuousClock.Instant? = nil) {
        guard let sessions = link.markEnded(graceOverAt: now) else { return }
        table.unregister(link)
        for session in sessions {
            close(session, reason: .peerDisconnected, by: .relay)
        }
        presence.unwatch(link)
        deviceSeen(link)
        logger.debug("Link ended", metadata: ["link.id": "\(link.id)", "link.party": "\(link.party.rawValue)"])
    }

    /// A device link came, went or detached: its watchers hear of it, and when it was last seen
    /// is recorded.
    private func deviceSeen(_ link: Link) {
        guard link.party == .device else { return }
        let now = Date()
        presence.seen(link.principal, at: now)
        journal.record(.deviceSeen(deviceID: link.principal, at: now))
        presence.changed(link.principal, status: status(of:))
    }

    /// A device's presence as watchers see it: a detached (reconnecting) device is offline.
    func status(of deviceID: String) -> PresenceBoard.Status {
        guard let link = table.links(of: .device, principal: deviceID).first, link.isAttached else {
            return .init(online: false, sessions: 0)
        }
        return .init(online: true, sessions: link.sessions.count { $0.currentPhase == .open })
    }

    /// Contract §9: a revoked device's live link ends at once; its sessions close with
    /// `device_revoked` and its socket with 1008.
    func revoke(deviceID: String) {
        for link in table.links(of: .device, principal: deviceID) {
            for session in link.sessions { close(session, reason: .deviceRevoked, by: .relay) }
            link.close(code: RelayCloseCode.policyViolation, reason: "Device revoked")
            end(link)
            logger.info("Revoked device disconnected", metadata: ["device.id": "\(deviceID)", "link.id": "\(link.id)"])
        }
    }

    /// Tells the other party of each of the link's sessions that the link is `status`.
    private func announce(_ link: Link, status: String) {
        for session in link.sessions where session.currentPhase == .open {
            session.peer(of: link)?.send(OutboundMessage("peer_status", ["session_id": .string(session.id), "status": .string(status)]))
        }
    }

    /// Graceful shutdown: `go_away` to every link, up to `drain` for clients to leave, then every
    /// session closes (`shutdown`) and every remaining socket closes with 1001.
    func shutdown(drain: Duration) async {
        let links = table.allLinks
        logger.info("Shutting down: telling clients to go away", metadata: ["links": "\(links.count)"])
        for link in links {
            link.send(OutboundMessage("go_away", ["reconnect_after_ms": .number(Double(Int.random(in: 1000...5000)))]))
        }
        let deadline = ContinuousClock.now + drain
        while ContinuousClock.now < deadline, table.allLinks.contains(where: \.isAttached) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for link in table.allLinks {
            for session in link.sessions { close(session, reason: .shutdown, by: .relay) }
            link.close(code: RelayCloseCode.goingAway, reason: "Relay shutting down")
        }
        // Let the writers put the close frames out.
        let closing = ContinuousClock.now + .seconds(2)
        while ContinuousClock.now < closing, table.allLinks.contains(where: \.isAttached) {
            try? await Task.sleep(for: .milliseconds(20))
        }
        for link in table.allLinks { end(link) }
    }

    // MARK: Messages

    /// What became of a message: refused by the rate limit, handled, or handled in part with
    /// the rest of its work (a request's ICE servers, a watch's registry reads) still to await.
    /// That work must finish before the link's next message is taken, so messages keep their order.
    enum Reception: Sendable {
        case refused
        case handled
        case pending(@Sendable () async -> Void)
    }

    /// Handles one text frame from `link` without waiting on anything slow; errors go back on
    /// the link, which stays open.
    func receive(text: String, from link: Link) -> Reception {
        guard admitMessage(from: link) else { return .refused }
        let envelope: ClientEnvelope
        do {
            envelope = try ClientEnvelope(text: text)
        } catch {
            metrics.received("invalid")
            link.send(error.outbound)
            return .handled
        }
        metrics.received(envelope.message.type)
        switch envelope.message {
        case .webrtcRequest, .watch:
            return .pending { [self] in
                do throws(SignalingError) {
                    try await dispatchSlowly(envelope, from: link)
                } catch {
                    link.send(error.outbound)
                }
            }
        default:
            do {
                try dispatch(envelope, from: link)
            } catch {
                link.send(error.outbound)
            }
            return .handled
        }
    }

    /// `receive`, then whatever it left to await. Returns false when the rate limit refused it.
    @discardableResult
    func handle(text: String, from link: Link) async -> Bool {
        switch receive(text: text, from: link) {
        case .refused: return false
        case .handled: return true
        case .pending(let work):
            await work()
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
    private func admitMessage(from link: Link) -> Bool {
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

    /// The messages that wait on the TURN provider or the registry.
    private func dispatchSlowly(_ envelope: ClientEnvelope, from link: Link) async throws(SignalingError) {
        switch envelope.message {
        case .webrtcRequest(let deviceID, let ttl, let metadata):
            try await openSession(deviceID: deviceID, ttl: ttl, metadata: metadata, from: link, requestID: envelope.requestID)
        case .watch(let deviceIDs):
            try await watch(deviceIDs, from: link, requestID: envelope.requestID)
        default:
            try dispatch(envelope, from: link)
        }
    }

    /// Every other message, handled at once.
    private func dispatch(_ envelope: ClientEnvelope, from link: Link) throws(SignalingError) {
        let requestID = envelope.requestID
        switch envelope.message {
        case .webrtcRequest, .watch:
            // `receive` hands these to `dispatchSlowly`; they never come here.
            throw SignalingError(.badRequest, "\(envelope.message.type) cannot be handled here", requestID: requestID)

        case .negotiation(let type, let sessionID, let fields):
            let session = try openSession(sessionID, of: link, requestID: requestID)
            session.peer(of: link)?.send(OutboundMessage(type, fields: fields))
            if type == "webrtc_answer", session.markAnswered() { answered(session) }

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
            link.send(OutboundMessage("pong", ["request_id": requestID.map(JSONValue.string)]))

        case .ack(let seq):
            link.acknowledge(through: seq)

        case .auth(let token):
            try refreshToken(token, on: link, requestID: requestID)

        case .deviceInfo(let capabilities):
            guard link.party == .device else { throw SignalingError(.badRequest, "device_info is for devices", requestID: requestID) }
            presence.describe(link.principal, capabilities: capabilities)
        }
    }

    /// Contract §8: `device_status` now and on every change, for the devices the user may
    /// reach; the others are named in one `unauthorized` error.
    private func watch(_ deviceIDs: [String], from link: Link, requestID: String?) async throws(SignalingError) {
        guard link.party == .app, let identity = link.appIdentity else {
            throw SignalingError(.badRequest, "watch is for apps", requestID: requestID)
        }
        var allowed: [String] = []
        var refused: [String] = []
        for deviceID in Set(deviceIDs).sorted() {
            if await mayReach(identity, deviceID: deviceID) { allowed.append(deviceID) } else { refused.append(deviceID) }
        }
        presence.watch(link, deviceIDs: allowed, status: status(of:))
        guard refused.isEmpty else {
            throw SignalingError(.unauthorized, "Not authorized: \(refused.joined(separator: ", "))", requestID: requestID)
        }
    }

    /// The first answer went through: the session is set up.
    private func answered(_ session: Session) {
        metrics.sessionAnswered(requestedAt: session.requestedAt)
        journal.record(.sessionAnswered(sessionID: session.id, at: Date()))
        logger.info("Session answered", metadata: sessionMetadata(session))
    }

    /// The open session `sessionID` of which `link` is a party; anything else is `unknown_session`.
    private func openSession(_ sessionID: String, of link: Link, requestID: String?) throws(SignalingError) -> Session {
        guard let session = link.session(sessionID), session.isOpen else {
            throw SignalingError(.unknownSession, "Unknown session", sessionID: sessionID, requestID: requestID)
        }
        return session
    }

    /// Contract §3.1: checks in order (well formed, authorized, online, not busy, ICE servers),
    /// then tells the app and the device.
    private func openSession(deviceID: String, ttl: Int?, metadata: JSONValue?, from link: Link, requestID: String?) async throws(SignalingError) {
        let requestedAt = ContinuousClock.now
        guard link.party == .app, let identity = link.appIdentity else {
            throw SignalingError(.badRequest, "webrtc_request is for apps", requestID: requestID)
        }
        guard DeviceSignature.isValidDeviceID(deviceID) else {
            throw SignalingError(.badRequest, "device_id must be 1-128 characters of [A-Za-z0-9._:-]", requestID: requestID)
        }
        guard await mayReach(identity, deviceID: deviceID) else {
            throw SignalingError(.unauthorized, "Not authorized", requestID: requestID)
        }
        let session: Session
        switch table.reserveSession(
            app: link,
            deviceID: deviceID,
            maxPerDevice: limits.maxSessionsPerDevice,
            maxPerApp: limits.maxSessionsPerApp,
            setupTimeout: limits.setupTimeout,
            requestedAt: requestedAt
        ) {
        case .success(let reserved):
            session = reserved
            journal.record(.sessionOpened(sessionID: session.id, userID: identity.userID, deviceID: deviceID, at: session.createdAt))
        case .failure(.deviceOffline):
            throw SignalingError(.deviceOffline, "Device offline", requestID: requestID)
        case .failure(.deviceBusy(let limit)):
            throw SignalingError(.deviceBusy, "Device busy: it already has \(limit) sessions", requestID: requestID)
        case .failure(.appLimit(let limit)):
            throw SignalingError(.rateLimited, "Too many sessions on this connection (at most \(limit))", requestID: requestID)
        }

        let document: CredentialDocument
        do throws(TURNError) {
            document = try await turn.mint(ttl: ttl ?? TURNLimits.defaultTTL, identifier: session.id)
        } catch {
            close(session, reason: .turnError, by: .relay)
            logger.warning(
                "Minting ICE servers failed",
                metadata: ["session.id": "\(session.id)", "turn.provider": "\(turn.name)", "error": "\(error.detail)"]
            )
            throw SignalingError(.turnError, "TURN error: \(error.detail)", requestID: requestID)
        }
        let iceServers = JSONValue.raw(Self.encode(document))
        let opened = session.open(with: document, refreshIn: refreshDelay(document.ttl)) {
            link.send(
                OutboundMessage(
                    "webrtc_credentials",
                    [
                        "session_id": .string(session.id),
                        "device_id": .string(deviceID),
                        "ice_servers": iceServers,
                        "request_id": requestID.map(JSONValue.string),
                    ]
                )
            )
            session.device.send(
                OutboundMessage(
                    "webrtc_request",
                    [
                        "session_id": .string(session.id),
                        "user_id": .string(identity.userID),
                        "ice_servers": iceServers,
                        "metadata": metadata,
                    ]
                )
            )
        }
        guard opened else {
            // The device left while ICE servers were minted.
            revokeLater([document])
            throw SignalingError(.deviceOffline, "Device offline", requestID: requestID)
        }
        armTimer(session)
        metrics.sessionStarted()
        presence.changed(deviceID, status: status(of:))
        logger.info("Session opened", metadata: sessionMetadata(session))
    }

    private func sessionMetadata(_ session: Session) -> Logger.Metadata {
        [
            "session.id": "\(session.id)", "user.id": "\(session.userID)", "device.id": "\(session.deviceID)",
            "app.link.id": "\(session.app.id)", "device.link.id": "\(session.device.id)",
        ]
    }

    /// Contract §1.3: the token's `devices` claim, or the registry's owners.
    private func mayReach(_ identity: AppIdentity, deviceID: String) async -> Bool {
        if identity.devices?.contains(deviceID) == true { return true }
        do {
            return try await directory.device(deviceID)?.owners.contains(identity.userID) ?? false
        } catch {
            logger.error("Device registry lookup failed", metadata: ["device.id": "\(deviceID)", "error": "\(error)"])
            return false
        }
    }

    /// Ends a session once, telling both parties who ended it and why.
    func close(_ session: Session, reason: SessionCloseReason, by closer: SessionCloser, detail: String? = nil) {
        let action = session.markClosed(reason, by: closer)
        if case .none = action { return }
        table.remove(session)
        journal.record(.sessionClosed(sessionID: session.id, at: Date(), reason: reason.rawValue, closedBy: closer.rawValue))
        var metadata = sessionMetadata(session)
        metadata["session.reason"] = "\(reason)"
        metadata["session.closed_by"] = "\(closer.rawValue)"
        guard case .announce(let credentials) = action else {
            logger.info("Session ended before it opened", metadata: metadata)
            return
        }
        revokeLater(credentials)
        metrics.sessionEnded(reason: reason.rawValue, by: closer.rawValue)
        presence.changed(session.deviceID, status: status(of:))
        let message = OutboundMessage(
            "webrtc_close",
            [
                "session_id": .string(session.id),
                "reason": .string(reason.rawValue),
                "by": .string(closer.rawValue),
                "detail": detail.map(JSONValue.string),
            ]
        )
        session.app.send(message)
        session.device.send(message)
        logger.info("Session closed", metadata: metadata)
    }

    /// Revokes credentials off the caller's path: a close never waits on the TURN provider.
    private func revokeLater(_ documents: [CredentialDocument]) {
        guard !documents.isEmpty else { return }
        let turn = turn
        Task {
            for document in documents { await turn.revoke(document) }
        }
    }

    /// Where the sessions' timers run: an event loop, so a session costs no task of its own.
    private static let timers = MultiThreadedEventLoopGroup.singleton.any()

    /// Arms the session's timer for its next deadline (set-up timeout, ICE refresh).
    private func armTimer(_ session: Session) {
        session.armTimer { delay in
            Self.timers.scheduleTask(in: TimeAmount(delay)) { [weak self] in self?.deadlinePassed(session) }
        }
    }

    /// Contract §3.3: a session not answered within the set-up timeout closes (`setup_timeout`).
    /// Contract §3.4: at 80 % of the credentials' ttl, fresh ones go to both parties as
    /// `ice_servers_refresh`, until the session closes.
    private func deadlinePassed(_ session: Session) {
        switch session.deadlinePassed() {
        case .none:
            armTimer(session)
        case .closeForSetupTimeout:
            close(session, reason: .setupTimeout, by: .relay)
        case .mint(let ttl):
            armTimer(session)
            Task { await refresh(session, ttl: ttl) }
        }
    }

    private func refresh(_ session: Session, ttl: Int) async {
        let fresh: CredentialDocument
        do throws(TURNError) {
            fresh = try await turn.mint(ttl: ttl, identifier: session.id)
        } catch {
            logger.warning("Refreshing ICE servers failed; retrying", metadata: ["session.id": "\(session.id)", "error": "\(error.detail)"])
            if session.refreshFailed(retryIn: min(refreshDelay(ttl), .seconds(30))) { armTimer(session) }
            return
        }
        let message = OutboundMessage(
            "ice_servers_refresh",
            ["session_id": .string(session.id), "ice_servers": .raw(Self.encode(fresh))]
        )
        let delivered = session.refreshed(with: fresh, refreshIn: refreshDelay(fresh.ttl)) {
            session.app.send(message)
            session.device.send(message)
        }
        guard delivered else {
            // The session closed during the mint.
            await turn.revoke(fresh)
            return
        }
        armTimer(session)
    }

    /// `auth`: a fresh token for the same user keeps an app link authorized.
    private func refreshToken(_ token: String, on link: Link, requestID: String?) throws(SignalingError) {
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

    static func encode(_ document: CredentialDocument) -> String {
        let servers: [JSONValue] = document.iceServers.map { server in
            var fields: [String: JSONValue] = [:]
            switch server.urls {
            case .one(let url): fields["urls"] = .string(url)
            case .many(let urls): fields["urls"] = .array(urls.map(JSONValue.string))
            }
            if let username = server.username { fields["username"] = .string(username) }
            if let credential = server.credential { fields["credential"] = .string(credential) }
            return .object(fields)
        }
        return JSONValue.object(["iceServers": .array(servers), "ttl": .number(Double(document.ttl)), "expiresAt": .string(document.expiresAt)])
            .serialized
    }
}
