/// How sessions are set up, kept fresh and ended on the switchboard: reservation, ICE servers, timers, closes.
import DeviceAuth
import Foundation
import Logging
import NIOCore
import NIOPosix
import Registry
import RelayCore
import TURNBroker

extension Switchboard {
    /// The first answer went through: the session is set up (counted and audited by the node
    /// that keeps its timers).
    func answered(_ session: Session) {
        liveState?.sessionChanged(session)
        guard session.keepsTimers else { return }
        metrics.sessionAnswered(requestedAt: session.requestedAt)
        journal.record(.sessionAnswered(sessionID: session.id, at: Date()))
        logger.info("Session answered", metadata: sessionMetadata(session))
    }

    /// The open session `sessionID` of which `link` is a party; anything else is `unknown_session`.
    func openSession(_ sessionID: String, of link: Link, requestID: String?) throws(SignalingError) -> Session {
        guard let session = link.session(sessionID), session.isOpen else {
            throw SignalingError(.unknownSession, "Unknown session", sessionID: sessionID, requestID: requestID)
        }
        return session
    }

    /// Contract §3.1: checks in order (well formed, authorized, online, not busy, ICE servers),
    /// then tells the app and the device.
    func openSession(deviceID: String, ttl: Int?, metadata: JSONValue?, from link: Link, requestID: String?) async throws(SignalingError) {
        let requestedAt = ContinuousClock.now
        guard link.party == .app, let identity = link.appIdentity else {
            throw SignalingError(.badRequest, "webrtc_request is for apps", requestID: requestID)
        }
        guard DeviceSignature.isValidDeviceID(deviceID) else {
            throw SignalingError(.badRequest, "device_id must be 1-128 characters of [A-Za-z0-9._:-]", requestID: requestID)
        }
        guard try await mayReach(identity, deviceID: deviceID, requestID: requestID) else {
            throw SignalingError(.unauthorized, "Not authorized", requestID: requestID)
        }
        let session = try await reserveSession(for: link, identity: identity, deviceID: deviceID, requestedAt: requestedAt, requestID: requestID)
        let document = try await mintCredentials(for: session, ttl: ttl, requestID: requestID)
        let iceServers = JSONValue.raw(Self.encode(document))
        let opened = session.open(with: document, refreshIn: refreshDelay(document.ttl)) { stored in
            link.send(ServerMessage.credentials(sessionID: session.id, deviceID: deviceID, iceServers: iceServers, requestID: requestID).outbound)
            session.device.send(
                ServerMessage.request(sessionID: session.id, userID: identity.userID, iceServers: iceServers, metadata: metadata).outbound,
                // The device's node takes the session up (and keeps its timers) before the request.
                event: .opened(stored)
            )
        }
        guard opened else {
            // The device left while ICE servers were minted.
            revokeLater([document])
            throw SignalingError(.deviceOffline, "Device offline", requestID: requestID)
        }
        table.opened(session)
        liveState?.sessionChanged(session)
        armTimer(session)
        metrics.sessionStarted()
        presenceMayHaveChanged(deviceID)
        logger.info("Session opened", metadata: sessionMetadata(session))
    }

    /// A place for the session on the device (contract §3.1: online, not busy, within the app's limit), audited as opened.
    private func reserveSession(
        for link: Link,
        identity: AppIdentity,
        deviceID: String,
        requestedAt: ContinuousClock.Instant,
        requestID: String?
    ) async throws(SignalingError) -> Session {
        let reservation: Result<Session, SessionRefusal>
        do throws(StoreError) {
            reservation = try await table.reserveSession(
                app: link,
                deviceID: deviceID,
                limits: SessionLimits(maxPerDevice: limits.maxSessionsPerDevice, maxPerApp: limits.maxSessionsPerApp),
                setupTimeout: limits.setupTimeout,
                requestedAt: requestedAt
            )
        } catch {
            logger.error("Reserving a session failed", metadata: ["device.id": "\(deviceID)", "error": "\(error)"])
            throw Self.storeUnavailable(requestID: requestID)
        }
        switch reservation {
        case .success(let session):
            journal.record(.sessionOpened(sessionID: session.id, userID: identity.userID, deviceID: deviceID, at: session.createdAt))
            return session
        case .failure(.deviceOffline):
            throw SignalingError(.deviceOffline, "Device offline", requestID: requestID)
        case .failure(.deviceBusy(let limit)):
            throw SignalingError(.deviceBusy, "Device busy: it already has \(limit) sessions", requestID: requestID)
        case .failure(.appLimit(let limit)):
            throw SignalingError(.rateLimited, "Too many sessions on this connection (at most \(limit))", requestID: requestID)
        }
    }

    /// The session's ICE servers; a provider that fails closes the session (`turn_error`).
    private func mintCredentials(for session: Session, ttl: Int?, requestID: String?) async throws(SignalingError) -> CredentialDocument {
        do throws(TURNError) {
            return try await turn.mint(ttl: ttl ?? TURNLimits.defaultTTL, identifier: session.id)
        } catch {
            close(session, reason: .turnError, by: .relay)
            logger.warning(
                "Minting ICE servers failed",
                metadata: ["session.id": "\(session.id)", "turn.provider": "\(turn.name)", "error": "\(error.detail)"]
            )
            throw SignalingError(.turnError, "TURN error: \(error.detail)", requestID: requestID)
        }
    }

    func sessionMetadata(_ session: Session) -> Logger.Metadata {
        [
            "session.id": "\(session.id)", "user.id": "\(session.userID)", "device.id": "\(session.deviceID)",
            "app.link.id": "\(session.app.id)", "device.link.id": "\(session.device.id)",
        ]
    }

    /// Contract §1.3: the token's `devices` claim, or the registry's owners. A registry that
    /// does not answer is an error of its own (the client tries again), never a refusal.
    func mayReach(_ identity: AppIdentity, deviceID: String, requestID: String?) async throws(SignalingError) -> Bool {
        if identity.devices?.contains(deviceID) == true { return true }
        do {
            return try await directory.device(deviceID)?.owners.contains(identity.userID) ?? false
        } catch {
            logger.error("Device registry lookup failed", metadata: ["device.id": "\(deviceID)", "error": "\(error)"])
            throw Self.storeUnavailable(requestID: requestID)
        }
    }

    /// The answer while the store does not answer (`device_offline`, which clients retry).
    static func storeUnavailable(requestID: String?) -> SignalingError {
        SignalingError(.deviceOffline, "The relay cannot reach its store to set the session up; try again shortly", requestID: requestID)
    }

    /// Ends a session once, telling both parties who ended it and why. `fromAnotherNode`: the
    /// copy on the other party's node closed it and told its own party already.
    func close(_ session: Session, reason: SessionCloseReason, by closer: SessionCloser, detail: String? = nil, fromAnotherNode: Bool = false) {
        let action = session.markClosed(reason, by: closer)
        if case .none = action { return }
        table.remove(session)
        liveState?.sessionChanged(session)
        let keeper: Bool
        if case .announce = action { keeper = session.keepsTimers } else { keeper = true }
        if keeper {
            journal.record(.sessionClosed(sessionID: session.id, at: Date(), reason: reason.rawValue, closedBy: closer.rawValue))
        }
        var metadata = sessionMetadata(session)
        metadata["session.reason"] = "\(reason)"
        metadata["session.closed_by"] = "\(closer.rawValue)"
        guard case .announce(let credentials) = action else {
            logger.info("Session ended before it opened", metadata: metadata)
            return
        }
        if keeper {
            revokeLater(credentials)
            metrics.sessionEnded(reason: reason.rawValue, by: closer.rawValue)
        }
        presenceMayHaveChanged(session.deviceID)
        let parties: [any LinkEndpoint] = [session.app, session.device]
        tellClosed(session.id, reason: reason, by: closer, detail: detail, to: parties.filter { !fromAnotherNode || table.serves($0) })
        logger.info("Session closed", metadata: metadata)
    }

    /// Tells `parties` the session ended (`webrtc_close`); a party on another node hears it
    /// after that node's copy of the session closed too. Every cause of a close ends here.
    func tellClosed(_ sessionID: String, reason: SessionCloseReason, by closer: SessionCloser, detail: String? = nil, to parties: [any LinkEndpoint]) {
        let message = ServerMessage.close(sessionID: sessionID, reason: reason, by: closer, detail: detail).outbound
        let event = SessionEvent.closed(sessionID: sessionID, reason: reason.rawValue, by: closer.rawValue)
        for party in parties { party.send(message, event: event) }
    }

    /// Revokes credentials off the caller's path: a close never waits on the TURN provider.
    func revokeLater(_ documents: [CredentialDocument]) {
        guard !documents.isEmpty else { return }
        let turn = turn
        errands.run {
            for document in documents { await turn.revoke(document) }
        }
    }

    /// Where the sessions' timers run: an event loop, so a session costs no task of its own.
    static let timers = MultiThreadedEventLoopGroup.singleton.any()

    /// Arms the session's timer for its next deadline (set-up timeout, ICE refresh).
    func armTimer(_ session: Session) {
        guard session.keepsTimers else { return }
        session.armTimer { delay in
            Self.timers.scheduleTask(in: TimeAmount(delay)) { [weak self] in self?.deadlinePassed(session) }
        }
    }

    /// Contract §3.3: a session not answered within the set-up timeout closes (`setup_timeout`).
    /// Contract §3.4: at 80 % of the credentials' ttl, fresh ones go to both parties as
    /// `ice_servers_refresh`, until the session closes.
    func deadlinePassed(_ session: Session) {
        switch session.deadlinePassed() {
        case .none:
            armTimer(session)
        case .closeForSetupTimeout:
            close(session, reason: .setupTimeout, by: .relay)
        case .mint(let ttl):
            armTimer(session)
            errands.run { [self] in await refresh(session, ttl: ttl) }
        }
    }

    func refresh(_ session: Session, ttl: Int) async {
        let fresh: CredentialDocument
        do throws(TURNError) {
            fresh = try await turn.mint(ttl: ttl, identifier: session.id)
        } catch {
            logger.warning("Refreshing ICE servers failed; retrying", metadata: ["session.id": "\(session.id)", "error": "\(error.detail)"])
            if session.refreshFailed(retryIn: min(refreshDelay(ttl), .seconds(30))) {
                liveState?.sessionChanged(session)
                armTimer(session)
            }
            return
        }
        let message = ServerMessage.iceServersRefresh(sessionID: session.id, iceServers: .raw(Self.encode(fresh))).outbound
        let delivered = session.refreshed(with: fresh, refreshIn: refreshDelay(fresh.ttl)) {
            session.app.send(message)
            session.device.send(message)
        }
        guard delivered else {
            // The session closed during the mint.
            await turn.revoke(fresh)
            return
        }
        liveState?.sessionChanged(session)
        armTimer(session)
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
