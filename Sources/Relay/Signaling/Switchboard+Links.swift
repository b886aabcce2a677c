/// How links come and go on the switchboard: admission, resume, detach and grace, end, revocation, shutdown.
import DeviceAuth
import Foundation
import Logging
import NIOCore
import NIOPosix
import Registry
import RelayCore
import Synchronization
import TURNBroker

extension Switchboard {
    // MARK: Links

    /// A transport admitted onto a link.
    struct Admission: Sendable {
        var link: Link
        /// The link's generation the transport's writer serves.
        var generation: Int
        var resumed: Bool
    }

    /// Before a transport is admitted, what the table must do first (`SessionTable.prepare`: a
    /// link another node has brought here, a fresh link claimed where every node sees it).
    /// Refused (503) once the relay drains: bringing a link from another node takes a while,
    /// and the drain may have begun meanwhile.
    func prepare(_ identity: ClientIdentity, resume: ResumeRequest?) async throws(RelayHTTPError) -> LinkSeed? {
        let seed = try await table.prepare(identity, resume: resume, on: self)
        if isDraining { throw RelayHTTPError.restarting }
        return seed
    }

    /// Admits a new transport: onto the client's detached link when it resumes with that link's
    /// token and the replay can be complete, else onto a fresh link (made from `seed` when one
    /// was claimed). A device's fresh link ends its older link (close 4002 on a socket still open).
    func admit(
        _ identity: ClientIdentity,
        resume: ResumeRequest?,
        seed: LinkSeed? = nil,
        dropTransport: @escaping @Sendable () -> Void
    ) -> Admission {
        let (party, principal) = identity.partyAndPrincipal
        var app: AppIdentity?
        if case .app(let identity) = identity { app = identity }
        if let resume, let link = table.links(of: party, principal: principal).first(where: { $0.accepts(resumeToken: resume.token) }) {
            if let generation = attachTransport(to: link, resumingAfter: resume.lastSeq, dropTransport: dropTransport) {
                if let app { link.replaceAppIdentity(app, validUntil: app.expiresAt + limits.tokenLeeway) }
                logger.info("Link resumed", metadata: ["link.id": "\(link.id)", "link.party": "\(party.rawValue)"])
                goAwayIfDraining(link)
                return Admission(link: link, generation: generation, resumed: true)
            }
            // The replay cannot be complete: this link is over; the client starts afresh.
            logger.info("Link cannot be resumed; starting a fresh one", metadata: ["link.id": "\(link.id)"])
            end(link)
        }
        let link = Link(
            node: table.node,
            seed: seed ?? LinkSeed(),
            party: party,
            principal: principal,
            app: app,
            machine: Link.Machine(
                outbox: OutboxBuffer(maxMessages: limits.keptMessages, maxBytes: limits.keptBytes),
                rate: TokenBucket(burst: limits.rateBurst, perSecond: limits.ratePerSecond),
                resumeGrace: limits.resumeGrace,
                tokenValidUntil: app.map { $0.expiresAt + limits.tokenLeeway }
            ),
            metrics: metrics,
            journal: liveState
        )
        let generation = link.attach(resumingAfter: nil, dropTransport: dropTransport)!.generation
        if let replaced = table.register(link) {
            logger.info("Device connected again; replacing its older link", metadata: ["device.id": "\(principal)", "link.id": "\(replaced.id)"])
            replaced.close(code: RelayCloseCode.replaced, reason: "Replaced by a newer connection")
            end(replaced)
        }
        link.noteChanged()
        deviceSeen(link)
        logger.debug("Link attached", metadata: ["link.id": "\(link.id)", "link.party": "\(party.rawValue)"])
        goAwayIfDraining(link)
        return Admission(link: link, generation: generation, resumed: false)
    }

    /// A client admitted while the relay began to drain (its admission was under way, a link
    /// coming from another node, when `go_away` went out) hears it too, after its `hello`.
    private func goAwayIfDraining(_ link: Link) {
        guard isDraining else { return }
        link.send(ServerMessage.goAway(reconnectAfterMilliseconds: Int.random(in: 1000...5000)).outbound)
    }

    /// Attaches a new transport to an existing link (a resume, or the next poll or event stream
    /// of an HTTP link): it supersedes the previous transport, gets every kept message after
    /// `lastSeq` (nil: after what was already handed out), and the other parties hear
    /// `connected` if the link was detached. Nil when the link ended or the replay cannot be
    /// complete.
    func attachTransport(to link: Link, resumingAfter lastSeq: Int?, dropTransport: @escaping @Sendable () -> Void) -> Int? {
        guard let (generation, previous) = link.attach(resumingAfter: lastSeq, dropTransport: dropTransport) else { return nil }
        if previous == .detached {
            table.setAttached(link)
            announce(link, status: .connected)
            deviceSeen(link)
        }
        return generation
    }

    /// The transport of `generation` is gone. The link detaches for the resume grace (its
    /// messages are kept; the other parties hear `reconnecting`), then ends.
    func transportEnded(_ link: Link, generation: Int) {
        detached(link, link.transportEnded(generation: generation, armGrace: graceTimer(for: link)))
    }

    /// Contract §7: an HTTP transport whose poll answered keeps the link for the resume grace;
    /// if no poll or stream comes by then, the transport is lost (`transportEnded`).
    func lease(_ link: Link, generation: Int) {
        link.lease(generation: generation) { delay in
            Self.timers.scheduleTask(in: TimeAmount(delay)) { [weak self] in
                guard let self else { return }
                detached(link, link.leaseExpired(generation: generation, armGrace: graceTimer(for: link)))
            }
        }
    }

    /// Arms the end of a detached link's grace.
    func graceTimer(for link: Link) -> (Duration) -> Scheduled<Void> {
        { delay in Self.timers.scheduleTask(in: TimeAmount(delay)) { [weak self] in self?.end(link, graceOverAt: .now) } }
    }

    /// What follows a transport's loss.
    private func detached(_ link: Link, _ action: Link.Machine.DetachAction) {
        switch action {
        case .none:
            return
        case .end:
            end(link)
        case .detached:
            table.setAttached(link)
            announce(link, status: .reconnecting)
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
    func deviceSeen(_ link: Link) {
        guard link.party == .device else { return }
        let now = Date()
        presence.seen(link.principal, at: now)
        journal.record(.deviceSeen(deviceID: link.principal, at: now))
        presenceMayHaveChanged(link.principal)
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
    func announce(_ link: Link, status: ServerMessage.PeerStatus) {
        for session in link.sessions where session.currentPhase == .open {
            session.peer(of: link)?.send(ServerMessage.peerStatus(sessionID: session.id, status: status).outbound)
        }
    }

    /// Graceful shutdown (contract §11): no new link is taken, `go_away` goes to every link,
    /// up to `drain` for clients to leave, then every remaining socket closes with 1001 (the
    /// journal writes the live state as the services stop after this). Links and sessions stay in the store, open: the next
    /// process takes them over and the clients resume there. Without a store to keep them,
    /// sessions close (`shutdown`) and links end, as in v1.
    func shutdown(drain configured: Duration) async {
        draining.store(true, ordering: .relaxed)
        // A node the fleet declared dead lost its links already: nothing to wait for.
        let drain = table.isFenced ? .zero : configured
        let links = table.allLinks
        logger.info("Shutting down: telling clients to go away", metadata: ["links": "\(links.count)"])
        for link in links { goAwayIfDraining(link) }
        let deadline = ContinuousClock.now + drain
        while ContinuousClock.now < deadline, table.allLinks.contains(where: \.isAttached) {
            try? await Task.sleep(for: .milliseconds(50))
        }
        for link in table.allLinks {
            if liveState == nil {
                for session in link.sessions { close(session, reason: .shutdown, by: .relay) }
            }
            link.close(code: RelayCloseCode.goingAway, reason: "Relay shutting down")
        }
        // Let the writers put the close frames out, and clients answer them; then cut what is
        // still attached, so a client that never reads holds nobody up.
        let closing = ContinuousClock.now + .milliseconds(300)
        while ContinuousClock.now < closing, table.allLinks.contains(where: \.isAttached) {
            try? await Task.sleep(for: .milliseconds(20))
        }
        for link in table.allLinks where link.isAttached { link.cutTransport() }
        // With a journal, its last write (when the services stop, after this) keeps them all.
        if liveState == nil {
            for link in table.allLinks { end(link) }
        }
    }
}

extension ClientIdentity {
    /// Which party the client is, and its user or device id.
    var partyAndPrincipal: (Party, String) {
        switch self {
        case .app(let identity): (.app, identity.userID)
        case .device(let record): (.device, record.deviceID)
        }
    }
}
