/// Messages other nodes of the fleet sent to this node's links, and the session events they carry.
import DeviceAuth
import Foundation
import HTTPTypes
import Logging
import OpenSSLCrypto
import Registry
import RelayCore

extension Switchboard {
    /// Hands messages other nodes queued for this node's links to them, in order. A message
    /// that carries a session event is applied to this node's copy of the session first; one
    /// for a link that moved on follows it. A request for a link (its client resumed on another
    /// node) hands it over, with the messages after the request for it. What a message sent
    /// through another node leaves to await goes to `beside` (the inbox reader runs it as a
    /// child task). Returns the messages for links not here (the caller holds them a while for
    /// a link on its way).
    func deliver(
        _ rows: [RemoteDelivery],
        in fleet: FleetSessionTable,
        beside: (@escaping @Sendable () async -> Void) -> Void
    ) async -> [RemoteDelivery] {
        var strays: [RemoteDelivery] = []
        var carried = Set<Int64>()
        var moved: [String: Link] = [:]
        var done: [Int64] = []
        for (index, row) in rows.enumerated() {
            if let seq = row.seq, carried.contains(seq) { continue }
            guard let link = table.link(id: row.linkID) ?? moved[row.linkID] else {
                strays.append(row)
                continue
            }
            if let seq = row.seq { done.append(seq) }
            if case .handover(let node, let epoch) = row.event.flatMap(SessionEvent.init(encoded:)) {
                let later = rows[(index + 1)...].filter { $0.linkID == link.id }
                if await handOver(link, to: node, in: fleet, asked: epoch, carrying: later) {
                    carried.formUnion(later.compactMap(\.seq))
                    moved[link.id] = link
                }
                continue
            }
            if let work = deliver(row, to: link, in: fleet) { beside(work) }
        }
        // Gone from the inbox with the live-state write that holds what they caused.
        liveState?.inboxDelivered(done)
        return strays
    }

    /// Messages held for links that never arrived: a session one would have opened closes back.
    func dropStrays(_ rows: [RemoteDelivery], in fleet: FleetSessionTable) {
        for row in rows {
            if case .opened(let stored) = row.event.flatMap(SessionEvent.init(encoded:)) { refuseRemoteSession(stored, in: fleet) }
        }
        liveState?.inboxDelivered(rows.compactMap(\.seq))
    }

    /// One message for a link of this node (or one that moved on: it follows it); what it
    /// leaves to await, if anything.
    private func deliver(_ row: RemoteDelivery, to link: Link, in fleet: FleetSessionTable) -> (@Sendable () async -> Void)? {
        if link.forward(row) { return nil }
        let event = row.event.flatMap(SessionEvent.init(encoded:))
        if case .fromLink = event {
            // Sent by the link's client through another node (contract §7).
            if let message = try? JSONParser.object(row.openBody) {
                switch receive(message: .object(message), from: link) {
                case .refused, .handled: break
                case .pending(let work), .alongside(let work): return work
                }
            }
            return nil
        }
        if let event, !apply(event, to: link, in: fleet) { return nil }
        link.send(OutboundMessage(type: row.type, openBody: row.openBody))
        return nil
    }

    /// Hands `link` to `node`, where its client resumed: what it keeps, and its sessions whose
    /// timers this node kept, are written for that node with the link's new owner in one
    /// transaction; then this node's copies of its sessions reach it there. True once moved.
    func handOver(
        _ link: Link,
        to node: String,
        in fleet: FleetSessionTable,
        asked epoch: Int64? = nil,
        carrying later: [RemoteDelivery] = []
    ) async -> Bool {
        // A request this node made itself came back with the links it took over from the node
        // it asked: the link is where it was wanted. A request made before the link last moved
        // is stale: the node that made it no longer waits for it (its client went elsewhere).
        guard node != fleet.store.node else { return false }
        if let epoch {
            guard let row = try? await fleet.store.link(id: link.id), row.owner == fleet.store.node, row.epoch == epoch else {
                logger.debug("A stale request for a link was ignored", metadata: ["link.id": "\(link.id)", "node": "\(node)"])
                return false
            }
        }
        guard let (record, kept) = link.beginMove() else { return false }
        // What its client sent through this node goes first (the client's next messages,
        // sent there, must not overtake them).
        await fleet.outbox.written()
        let sessions = link.sessions
        let rows = Dictionary(sessions.compactMap { session in session.storedRow().map { (session.id, $0) } }) { first, _ in first }
        do throws(StoreError) {
            guard
                try await fleet.store.handOver(LinkHandover(link: record, messages: kept, sessions: Array(rows.values)), carrying: later, to: node)
            else {
                link.abortMove()
                return false
            }
        } catch {
            logger.warning("Handing a link over failed; it stays here", metadata: ["link.id": "\(link.id)", "error": "\(error)"])
            link.abortMove()
            return false
        }
        let remote = fleet.remote(link.id, principal: link.principal)
        var copies: [Session] = []
        for session in sessions {
            // A party that stays here keeps a copy of the session that reaches the link there.
            let stays = session.peer(of: link).flatMap { table.serves($0) ? $0 : nil }
            session.discard()
            table.remove(session)
            guard let other = stays, let row = rows[session.id],
                let copy = Session(
                    restoring: row,
                    app: link.party == .app ? remote : other,
                    device: link.party == .device ? remote : other,
                    keepsTimers: link.party == .app,
                    setupTimeout: limits.setupTimeout,
                    clock: WallClock()
                )
            else { continue }
            copies.append(copy)
        }
        table.unregister(link)
        presence.unwatch(link)
        for copy in copies where table.adopt(copy) { armTimer(copy) }
        link.finishMove(to: remote)
        logger.info("Link handed over to the node its client resumed on", metadata: ["link.id": "\(link.id)", "node": "\(node)"])
        return true
    }

    /// Before a transport is admitted on this node (`SessionTable.prepare`): a link resumed here
    /// that another node has is brought here; a device that does not resume a link of this node
    /// gets a fresh link claimed fleet-wide (contract §4's replace rule across nodes: the link it
    /// replaces, wherever it is, closes with 4002); an app's fresh link is written for the fleet
    /// (its next request may land on another node). Nil for a resume this node can serve.
    func prepare(_ identity: ClientIdentity, resume: ResumeRequest?, in fleet: FleetSessionTable) async throws(RelayHTTPError) -> LinkSeed? {
        let (party, principal) = identity.partyAndPrincipal
        if let resume, !table.links(of: party, principal: principal).contains(where: { $0.accepts(resumeToken: resume.token) }) {
            // The link may be on another node: it comes here first (contract §11).
            await bringHere(resumeToken: resume.token, party: party, principal: principal, in: fleet)
        }
        if let resume, table.links(of: party, principal: principal).contains(where: { $0.accepts(resumeToken: resume.token) }) {
            return nil
        }
        let seed = LinkSeed()
        guard case .device(let record) = identity else {
            guard case .app(let app) = identity else { return nil }
            do throws(StoreError) {
                try await fleet.store.registerLink(
                    StoredLink(
                        id: seed.id,
                        tokenHash: seed.tokenHash,
                        party: Party.app.rawValue,
                        principal: app.userID,
                        tokenValidUntil: app.expiresAt + limits.tokenLeeway,
                        tokenExpiresAt: app.expiresAt,
                        tokenDevices: app.devices.map { Array($0).sorted() },
                        attached: true
                    )
                )
            } catch {
                logger.error("Writing an app's new link failed", metadata: ["user.id": "\(app.userID)", "error": "\(error)"])
                throw RelayHTTPError.storeUnavailable
            }
            return seed
        }
        do throws(StoreError) {
            let replaced = try await fleet.store.claimDevice(
                StoredLink(id: seed.id, tokenHash: seed.tokenHash, party: Party.device.rawValue, principal: record.deviceID, attached: true)
            )
            if let replaced, replaced.node != fleet.store.node {
                logger.info("Device connected again; its older link on another node is replaced", metadata: ["device.id": "\(record.deviceID)", "link.id": "\(replaced.linkID)"])
            }
        } catch {
            logger.error("Claiming a device's link failed", metadata: ["device.id": "\(record.deviceID)", "error": "\(error)"])
            throw RelayHTTPError.storeUnavailable
        }
        return seed
    }

    /// Brings the link a client resumes with (`resumeToken`, as `party` of `principal`) to this
    /// node when another node of the fleet has it: handed over by a node that runs, taken over
    /// from one that stopped. Returns once it is here, or it cannot be (the client then starts
    /// afresh, as after any resume that cannot be served).
    private func bringHere(resumeToken: String, party: Party, principal: String, in fleet: FleetSessionTable) async {
        guard let row = try? await fleet.store.link(tokenHash: LibCrypto.sha256(Array(resumeToken.utf8))),
            row.party == party.rawValue, row.principal == principal
        else { return }
        await bringHere(row, in: fleet)
    }

    func bringHere(_ found: FleetLinkRow, in fleet: FleetSessionTable) async {
        var row: FleetLinkRow? = found
        let deadline = ContinuousClock.now + .seconds(8)
        var asked: Int64?
        while let current = row, table.link(id: current.linkID) == nil, ContinuousClock.now < deadline {
            if current.owner == fleet.store.node {
                if let state = try? await fleet.store.liveState(ofLink: current.linkID) { await arrive(state, in: fleet) }
                return
            }
            if let owner = current.owner, current.ownerRuns {
                if asked != current.epoch {
                    try? await fleet.store.requestHandover(of: current.linkID, from: owner, epoch: current.epoch)
                    asked = current.epoch
                }
                try? await Task.sleep(for: .milliseconds(20))
            } else if let taken = try? await fleet.store.takeOverStoppedNodes(), !taken.links.isEmpty {
                // Its node stopped: this node takes that node's links over now.
                logger.warning("Taking over the links of a node that stopped", metadata: ["links": "\(taken.links.count)", "node": "\(current.owner ?? "none")"])
                await arrive(taken, in: fleet)
            } else {
                try? await Task.sleep(for: .milliseconds(50))
            }
            row = try? await fleet.store.link(id: current.linkID)
        }
        if let row, table.link(id: row.linkID) == nil {
            logger.warning(
                "A resumed link could not be brought here; its client starts afresh",
                metadata: ["link.id": "\(row.linkID)", "node": "\(row.owner ?? "none")", "node.runs": "\(row.ownerRuns)"]
            )
        }
    }

    /// Links (and their sessions) from another node: the inbox reader restores them between two
    /// reads, so what it read for them first reaches them first; once it stopped, here.
    func arrive(_ state: StoredLiveState, in fleet: FleetSessionTable) async {
        if !(await fleet.arrivals.restore(state)) { _ = restore(state) }
    }

    /// Applies a session event to `link`'s session copy; whether the message that carried it
    /// is still to be delivered.
    private func apply(_ event: SessionEvent, to link: Link, in fleet: FleetSessionTable) -> Bool {
        switch event {
        case .opened(let stored):
            guard link.party == .device, link.session(stored.id) == nil else { return false }
            guard
                let session = Session(
                    restoring: stored,
                    app: fleet.remote(stored.appLink, principal: stored.userID),
                    device: link,
                    keepsTimers: true,
                    setupTimeout: limits.setupTimeout,
                    clock: WallClock()
                ),
                table.adopt(session)
            else {
                refuseRemoteSession(stored, in: fleet)
                return false
            }
            // This node keeps the session's timers and its row from now on.
            liveState?.sessionChanged(session)
            armTimer(session)
            metrics.sessionStarted()
            presenceMayHaveChanged(session.deviceID)
            logger.info("Session opened from another node", metadata: sessionMetadata(session))
            return true
        case .answered(let sessionID):
            if let session = link.session(sessionID), session.markAnswered() { answered(session) }
            return true
        case .closed(let sessionID, let reason, let by):
            // This node's party hears it from the close here (once, even when both sides
            // closed at the same time).
            if let session = link.session(sessionID) {
                close(
                    session,
                    reason: SessionCloseReason(rawValue: reason),
                    by: SessionCloser(rawValue: by) ?? .relay,
                    fromAnotherNode: true
                )
            }
            return false
        case .handover, .fromLink:
            return false
        case .ending(let sessionID, let reason):
            if let session = link.session(sessionID) { close(session, reason: SessionCloseReason(rawValue: reason), by: .relay) }
            return false
        case .replaced:
            logger.info("Device connected on another node; replacing its link here", metadata: ["device.id": "\(link.principal)", "link.id": "\(link.id)"])
            link.close(code: RelayCloseCode.replaced, reason: "Replaced by a newer connection")
            end(link)
            return false
        }
    }

    /// A session another node opened for a device link that is no longer here: the app hears
    /// it closed, and its row goes.
    private func refuseRemoteSession(_ stored: StoredSession, in fleet: FleetSessionTable) {
        tellClosed(stored.id, reason: .peerDisconnected, by: .relay, to: [fleet.remote(stored.appLink, principal: stored.userID)])
        liveState?.sessionEnded(stored.id)
    }
}
