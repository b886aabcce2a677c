import DeviceAuth
import Foundation
import Logging
import TURNBroker

/// The relay's signaling logic: admits links, sets sessions up, routes what one party of a
/// session sends to the other, and ends sessions. It owns no socket and never waits on one.
final class Switchboard: Sendable {
    struct Limits: Sendable {
        var maxSessionsPerDevice: Int
        var maxSessionsPerApp: Int
    }

    let table: any SessionTable
    let turn: any TURNProvider
    let directory: any DeviceDirectory
    let tokens: AppTokenVerifier
    let limits: Limits
    /// How long after minting a session's credentials (of the given ttl) to mint fresh ones.
    let refreshDelay: @Sendable (Int) -> Duration
    let logger: Logger

    init(
        table: any SessionTable,
        turn: any TURNProvider,
        directory: any DeviceDirectory,
        tokens: AppTokenVerifier,
        limits: Limits,
        refreshDelay: @escaping @Sendable (Int) -> Duration,
        logger: Logger
    ) {
        self.table = table
        self.turn = turn
        self.directory = directory
        self.tokens = tokens
        self.limits = limits
        self.refreshDelay = refreshDelay
        self.logger = logger
    }

    // MARK: Links

    /// Makes a newly connected link live. A device's older link is ended (close 4002).
    func attach(_ link: Link) {
        if let replaced = table.register(link) {
            logger.info(
                "Device connected again; replacing its older link",
                metadata: ["device.id": "\(link.principal)", "link.id": "\(replaced.id)"]
            )
            replaced.mailbox.close(code: RelayCloseCode.replaced, reason: "Replaced by a newer connection")
            endSessions(of: replaced)
        }
        logger.debug("Link attached", metadata: ["link.id": "\(link.id)", "link.party": "\(link.party.rawValue)"])
    }

    /// Forgets a link whose transport ended; its sessions close with `peer_disconnected`.
    func detach(_ link: Link) {
        table.unregister(link)
        endSessions(of: link)
        logger.debug("Link detached", metadata: ["link.id": "\(link.id)", "link.party": "\(link.party.rawValue)"])
    }

    private func endSessions(of link: Link) {
        for session in link.leaveAll() {
            close(session, reason: "peer_disconnected", by: "relay")
        }
    }

    // MARK: Messages

    /// Handles one text frame from `link`; errors go back on the link, which stays open.
    func handle(text: String, from link: Link) async {
        do {
            let envelope = try ClientEnvelope(text: text)
            try await dispatch(envelope, from: link)
        } catch {
            link.send(error.outbound)
        }
    }

    func handleBinary(from link: Link) {
        link.send(SignalingError(.badRequest, "Messages must be JSON in text frames").outbound)
    }

    private func dispatch(_ envelope: ClientEnvelope, from link: Link) async throws(SignalingError) {
        let requestID = envelope.requestID
        switch envelope.message {
        case .webrtcRequest(let deviceID, let ttl, let metadata):
            try await openSession(deviceID: deviceID, ttl: ttl, metadata: metadata, from: link, requestID: requestID)

        case .negotiation(let type, let sessionID, let fields):
            let session = try openSession(sessionID, of: link, requestID: requestID)
            session.peer(of: link)?.send(OutboundMessage(type, fields: fields))

        case .close(let sessionID, let reason):
            let session = try openSession(sessionID, of: link, requestID: requestID)
            close(session, reason: reason, by: link.party.rawValue)

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
            close(session, reason: "rejected", by: "device", detail: reason)

        case .ping:
            link.send(OutboundMessage("pong", ["request_id": requestID.map(JSONValue.string)]))

        case .ack:
            // Nothing is kept for replay yet, so there is nothing to release.
            break

        case .auth(let token):
            try refreshToken(token, on: link, requestID: requestID)

        case .watch:
            throw SignalingError(.badRequest, "watch (presence) is not available on this relay yet", requestID: requestID)

        case .deviceInfo(let capabilities):
            guard link.party == .device else { throw SignalingError(.badRequest, "device_info is for devices", requestID: requestID) }
            link.capabilities = capabilities
        }
    }

    /// The open session `sessionID` of which `link` is a party; anything else is `unknown_session`.
    private func openSession(_ sessionID: String, of link: Link, requestID: String?) throws(SignalingError) -> Session {
        guard let session = link.session(sessionID), session.currentPhase == .open else {
            throw SignalingError(.unknownSession, "Unknown session", sessionID: sessionID, requestID: requestID)
        }
        return session
    }

    /// Contract §3.1: checks in order (well formed, authorized, online, not busy, ICE servers),
    /// then tells the app and the device.
    private func openSession(deviceID: String, ttl: Int?, metadata: JSONValue?, from link: Link, requestID: String?) async throws(SignalingError) {
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
        switch table.reserveSession(app: link, deviceID: deviceID, maxPerDevice: limits.maxSessionsPerDevice, maxPerApp: limits.maxSessionsPerApp) {
        case .success(let reserved):
            session = reserved
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
            close(session, reason: "turn_error", by: "relay")
            logger.warning(
                "Minting ICE servers failed",
                metadata: ["session.id": "\(session.id)", "turn.provider": "\(turn.name)", "error": "\(error.detail)"]
            )
            throw SignalingError(.turnError, "TURN error: \(error.detail)", requestID: requestID)
        }
        let iceServers = JSONValue.raw(Self.encode(document))
        let opened = session.open(with: document) {
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
        scheduleRefresh(session, ttl: document.ttl)
        logger.info("Session opened", metadata: ["session.id": "\(session.id)", "user.id": "\(identity.userID)", "device.id": "\(deviceID)"])
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
    func close(_ session: Session, reason: String, by closer: String, detail: String? = nil) {
        guard let (previous, credentials) = session.markClosed() else { return }
        table.remove(session)
        revokeLater(credentials)
        guard previous == .open else { return }
        let message = OutboundMessage(
            "webrtc_close",
            [
                "session_id": .string(session.id),
                "reason": .string(reason),
                "by": .string(closer),
                "detail": detail.map(JSONValue.string),
            ]
        )
        session.app.send(message)
        session.device.send(message)
        logger.info("Session closed", metadata: ["session.id": "\(session.id)", "session.reason": "\(reason)", "session.closed_by": "\(closer)"])
    }

    /// Revokes credentials off the caller's path: a close never waits on the TURN provider.
    private func revokeLater(_ documents: [CredentialDocument]) {
        guard !documents.isEmpty else { return }
        let turn = turn
        Task {
            for document in documents { await turn.revoke(document) }
        }
    }

    /// Contract §3.4: at 80 % of the credentials' ttl, mint fresh ones and send both parties
    /// `ice_servers_refresh`, until the session closes (which cancels this task).
    private func scheduleRefresh(_ session: Session, ttl: Int) {
        let turn = turn
        let logger = logger
        let delay = refreshDelay(ttl)
        session.setRefresh(
            Task {
                var wait = delay
                while !Task.isCancelled {
                    do { try await Task.sleep(for: wait) } catch { return }
                    let fresh: CredentialDocument
                    do throws(TURNError) {
                        fresh = try await turn.mint(ttl: ttl, identifier: session.id)
                    } catch {
                        logger.warning("Refreshing ICE servers failed; retrying", metadata: ["session.id": "\(session.id)", "error": "\(error.detail)"])
                        wait = min(delay, .seconds(30))
                        continue
                    }
                    let message = OutboundMessage(
                        "ice_servers_refresh",
                        ["session_id": .string(session.id), "ice_servers": .raw(Self.encode(fresh))]
                    )
                    let delivered = session.refreshCredentials(fresh) {
                        session.app.send(message)
                        session.device.send(message)
                    }
                    guard delivered else {
                        await turn.revoke(fresh)
                        return
                    }
                    wait = delay
                }
            }
        )
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
        link.replaceAppIdentity(identity)
    }

    static func encode(_ document: CredentialDocument) -> String {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        return (try? String(decoding: encoder.encode(document), as: UTF8.self)) ?? "{}"
    }
}
