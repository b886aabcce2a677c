/// Messages other nodes of the fleet sent to this node's links, and the session events they carry.
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
    /// node) hands it over, with the messages after the request for it. Returns the messages
    /// for links not here (the caller holds them a while for a link on its way).
    func deliver(_ rows: [RemoteDelivery]) async -> [RemoteDelivery] {
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
                if await handOver(link, to: node, asked: epoch, carrying: later) {
                    carried.formUnion(later.compactMap(\.seq))
                    moved[link.id] = link
                }
                continue
            }
            deliver(row, to: link)
        }
        // Gone from the inbox with the live-state write that holds what they caused.
        liveState?.inboxDelivered(done)
        return strays
    }

    /// Messages held for links that never arrived: a session one would have opened closes back.
    func dropStrays(_ rows: [RemoteDelivery]) {
        for row in rows {
            if case .opened(let stored) = row.event.flatMap(SessionEvent.init(encoded:)) { refuseRemoteSession(stored) }
        }
        liveState?.inboxDelivered(rows.compactMap(\.seq))
    }

    /// One message for a link of this node (or one that moved on: it follows it).
    private func deliver(_ row: RemoteDelivery, to link: Link) {
        if link.forward(row) { return }
        let event = row.event.flatMap(SessionEvent.init(encoded:))
        if case .fromLink = event {
            // Sent by the link's client through another node (contract §7).
            if let message = try? JSONParser.object(row.openBody) {
                switch receive(message: .object(message), from: link) {
                case .refused, .handled: break
                case .pending(let work), .alongside(let work): Task { await work() }
                }
            }
            return
        }
        if let event, !apply(event, to: link) { return }
        link.send(OutboundMessage(type: row.type, openBody: row.openBody))
    }

    /// Hands `link` to `node`, where its client resumed: what it keeps, and its sessions whose
    /// timers this node kept, are written for that node with the link's new owner in one
    /// transaction; then this node's copies of its sessions reach it there. True once moved.
    func handOver(_ link: Link, to node: String, asked epoch: Int64? = nil, carrying later: [RemoteDelivery] = []) async -> Bool {
        // A request this node made itself came back with the links it took over from the node
        // it asked: the link is where it was wanted. A request made before the link last moved
        // is stale: the node that made it no longer waits for it (its client went elsewhere).
        guard let fleet = table.fleet, node != fleet.node else { return false }
        if let epoch {
            guard let row = try? await fleet.store.link(id: link.id), row.owner == fleet.node, row.epoch == epoch else {
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
        let remote = RemoteLink(id: link.id, principal: link.principal, outbox: fleet.outbox)
        table.unregister(link)
        presence.unwatch(link)
        for session in sessions {
            session.discard()
            table.remove(session)
            // A party that stays here keeps a copy of the session that reaches the link there.
            guard let other = session.peer(of: link) as? Link, let row = rows[session.id],
                let copy = Session(
                    restoring: row,
                    app: link.party == .app ? remote : other,
                    device: link.party == .device ? remote : other,
                    setupTimeout: limits.setupTimeout,
                    clock: WallClock()
                ),
                table.adopt(copy)
            else { continue }
            armTimer(copy)
        }
        link.finishMove(to: remote)
        logger.info("Link handed over to the node its client resumed on", metadata: ["link.id": "\(link.id)", "node": "\(node)"])
        return true
    }

    /// Brings the link a client resumes with (`resumeToken`, as `party` of `principal`) to this
    /// node when another node of the fleet has it: handed over by a node that runs, taken over
    /// from one that stopped. Returns once it is here, or it cannot be (the client then starts
    /// afresh, as after any resume that cannot be served).
    func bringHere(resumeToken: String, party: Party, principal: String) async {
        guard let fleet = table.fleet,
            let row = try? await fleet.store.link(tokenHash: LibCrypto.sha256(Array(resumeToken.utf8))),
            row.party == party.rawValue, row.principal == principal
        else { return }
        await bringHere(row, fleet: fleet)
    }

    /// The same for an HTTP fallback's request naming its link and token (contract §7: the link
    /// follows the request; a token that does not match moves nothing).
    func bringHere(linkID: String, resumeToken: String) async {
        guard let fleet = table.fleet, table.link(id: linkID) == nil,
            let row = try? await fleet.store.link(tokenHash: LibCrypto.sha256(Array(resumeToken.utf8))), row.linkID == linkID
        else { return }
        await bringHere(row, fleet: fleet)
    }

    /// Contract §7 in a fleet: `POST /api/link/send` for a link another node serves queues the
    /// messages for that node, which handles them as from the link (its rate limit and errors
    /// apply there). How many were queued; nil when no node serves it (the caller answers as
    /// for any unknown link). Throws 401 for a token that is not the link's.
    func forward(_ messages: [JSONValue], toLink linkID: String, resumeToken: String) async throws(RelayHTTPError) -> Int? {
        guard let fleet = table.fleet else { return nil }
        let row: FleetLinkRow?
        do throws(StoreError) {
            row = try await fleet.store.link(tokenHash: LibCrypto.sha256(Array(resumeToken.utf8)))
        } catch {
            throw RelayHTTPError.storeUnavailable
        }
        guard let row, row.owner != fleet.node, row.ownerRuns else { return nil }
        guard row.linkID == linkID else { throw RelayHTTPError(.unauthorized, "resume_token does not match this link") }
        let event = SessionEvent.fromLink.encoded
        do throws(StoreError) {
            try await fleet.store.send(messages.map { RemoteDelivery(linkID: linkID, type: "from_link", openBody: $0.serialized, event: event) })
        } catch {
            throw RelayHTTPError.storeUnavailable
        }
        return messages.count
    }

    private func bringHere(_ found: FleetLinkRow, fleet: Fleet) async {
        var row: FleetLinkRow? = found
        let deadline = ContinuousClock.now + .seconds(8)
        var asked: Int64?
        while let current = row, table.link(id: current.linkID) == nil, ContinuousClock.now < deadline {
            if current.owner == fleet.node {
                if let state = try? await fleet.store.liveState(ofLink: current.linkID) { await arrive(state, fleet: fleet) }
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
                await arrive(taken, fleet: fleet)
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
    func arrive(_ state: StoredLiveState, fleet: Fleet) async {
        if !(await fleet.arrivals.restore(state)) { _ = restore(state) }
    }

    /// Applies a session event to `link`'s session copy; whether the message that carried it
    /// is still to be delivered.
    private func apply(_ event: SessionEvent, to link: Link) -> Bool {
        switch event {
        case .opened(let stored):
            guard link.party == .device, link.session(stored.id) == nil, let fleet = table.fleet else { return false }
            guard
                let session = Session(
                    restoring: stored,
                    app: RemoteLink(id: stored.appLink, principal: stored.userID, outbox: fleet.outbox),
                    device: link,
                    setupTimeout: limits.setupTimeout,
                    clock: WallClock()
                ),
                table.adopt(session)
            else {
                refuseRemoteSession(stored)
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
    private func refuseRemoteSession(_ stored: StoredSession) {
        guard let fleet = table.fleet else { return }
        let close = OutboundMessage(
            "webrtc_close",
            [
                "session_id": .string(stored.id),
                "reason": .string(SessionCloseReason.peerDisconnected.rawValue),
                "by": .string(SessionCloser.relay.rawValue),
            ]
        )
        RemoteLink(id: stored.appLink, principal: stored.userID, outbox: fleet.outbox)
            .send(close, event: .closed(sessionID: stored.id, reason: SessionCloseReason.peerDisconnected.rawValue, by: SessionCloser.relay.rawValue))
        liveState?.sessionEnded(stored.id)
    }
}
