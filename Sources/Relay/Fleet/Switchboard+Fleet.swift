/// Messages other nodes of the fleet sent to this node's links, and the session events they carry.
import Foundation
import Logging
import Registry
import RelayCore

extension Switchboard {
    /// Hands messages other nodes queued for this node's links to them, in order. A message
    /// that carries a session event is applied to this node's copy of the session first; one
    /// for a link that ended here is dropped (a session it would have opened is closed back).
    func deliver(_ rows: [RemoteDelivery]) {
        for row in rows {
            let event = row.event.flatMap(SessionEvent.init(encoded:))
            guard let link = table.link(id: row.linkID) else {
                if case .opened(let stored) = event { refuseRemoteSession(stored) }
                continue
            }
            if let event, !apply(event, to: link) { continue }
            link.send(OutboundMessage(type: row.type, openBody: row.openBody))
        }
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
            presence.changed(session.deviceID, status: status(of:))
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
