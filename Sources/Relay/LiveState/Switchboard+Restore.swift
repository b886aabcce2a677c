/// Taking over what a previous process left live in the store: its links (detached, waiting for their clients) and their open sessions.
import DeviceAuth
import Foundation
import NIOCore
import Registry
import RelayCore
import TURNBroker

extension Switchboard {
    /// Takes over the links and sessions a previous process left in the store (contract
    /// §11). Each link is detached and waits a full resume grace from now for its client
    /// (which could not reach the relay while no process ran); its kept messages replay on
    /// the resume. Each session stays open between its restored links with its deadlines as
    /// they were: one that passed while no process ran is due at once (a set-up timeout
    /// closes it, a refresh mints). Returns how many links and sessions were taken over.
    /// Restoring what is here already changes nothing.
    func restore(_ stored: StoredLiveState, clock: WallClock = WallClock()) -> (links: Int, sessions: Int) {
        var links = 0
        // A link this node holds already stays as it is, with its sessions: it is at least as
        // new as the store's copy (in a fleet, two resumes may bring the same link here at once).
        let here = Set(stored.links.map(\.id).filter { table.link(id: $0) != nil })
        for record in stored.links where !here.contains(record.id) {
            guard let party = Party(rawValue: record.party) else { continue }
            let app = party == .app
                ? AppIdentity(userID: record.principal, expiresAt: record.tokenExpiresAt ?? 0, devices: record.tokenDevices.map(Set.init))
                : nil
            let frames = (stored.messages[record.id] ?? []).map { OutboxBuffer.Frame(seq: $0.seq, text: $0.text) }
            let link = Link(
                node: table.node,
                restoring: record,
                party: party,
                app: app,
                machine: Link.Machine(
                    outbox: OutboxBuffer(
                        maxMessages: limits.keptMessages,
                        maxBytes: limits.keptBytes,
                        restoring: frames,
                        // Restored before and not resumed since: what was queued since still follows
                        // whatever its client says it has.
                        storedThrough: record.restoredThrough ?? frames.last?.seq ?? 0
                    ),
                    rate: TokenBucket(burst: limits.rateBurst, perSecond: limits.ratePerSecond),
                    resumeGrace: limits.resumeGrace,
                    tokenValidUntil: party == .app ? record.tokenValidUntil ?? 0 : nil,
                    detachedUntil: clock.now + limits.resumeGrace,
                    client: ClientSequence(through: record.cseq)
                ),
                metrics: metrics,
                journal: liveState
            )
            if let replaced = table.register(link) { end(replaced) }
            link.noteChanged()
            link.armGrace(now: clock.now, graceTimer(for: link))
            links += 1
        }
        var sessions = 0
        let restored = Set(stored.links.map(\.id))
        for record in stored.sessions where !here.contains(record.appLink) && !here.contains(record.deviceLink) {
            let app = party(record.appLink, principal: record.userID, restored: restored, in: stored)
            let device = party(record.deviceLink, principal: record.deviceID, restored: restored, in: stored)
            guard let app, let device,
                let session = Session(
                    restoring: record,
                    app: app,
                    device: device,
                    keepsTimers: restored.contains(record.deviceLink),
                    setupTimeout: limits.setupTimeout,
                    clock: clock
                ),
                table.adopt(session)
            else {
                // A party's link did not survive (or the row is unreadable): the session is over;
                // a party that did survive hears it.
                liveState?.sessionEnded(record.id)
                journal.record(
                    .sessionClosed(sessionID: record.id, at: Date(), reason: SessionCloseReason.peerDisconnected.rawValue, closedBy: SessionCloser.relay.rawValue)
                )
                tellClosed(record.id, reason: .peerDisconnected, by: .relay, to: [app, device].compactMap { $0 })
                continue
            }
            armTimer(session)
            // A party that was not taken over hears that the one taken over waits for its client.
            for party in [session.app, session.device] where !restored.contains(party.id) {
                party.send(ServerMessage.peerStatus(sessionID: session.id, status: .reconnecting).outbound)
            }
            sessions += 1
        }
        return (links, sessions)
    }

    /// A restored session's party: a link restored with it, or one the table reaches elsewhere.
    private func party(_ linkID: String, principal: String, restored: Set<String>, in stored: StoredLiveState) -> (any LinkEndpoint)? {
        if restored.contains(linkID) { return table.link(id: linkID) }
        return table.partyElsewhere(linkID, principal: principal, in: stored)
    }
}
