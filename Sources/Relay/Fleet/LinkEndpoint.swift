/// A session's party as the switchboard reaches it: a link of this node, or a link another node of the fleet serves.
import Foundation
import Registry
import RelayCore

/// A party of a session: where its messages go. A `Link` of this node queues them itself; a
/// `RemoteLink` sends them through the fleet's store to the node that serves the link.
protocol LinkEndpoint: AnyObject, Sendable {
    var id: String { get }
    /// The user id of an app, the device id of a device.
    var principal: String { get }
    /// Queues `message` for the client. `event` is what the session's copy on the link's node
    /// is to do first (nothing for a link of this node: its session is the same object).
    func send(_ message: OutboundMessage, event: SessionEvent?)
}

extension LinkEndpoint {
    func send(_ message: OutboundMessage) { send(message, event: nil) }
}

/// A session's party that another node of the fleet serves: messages for it go through the
/// fleet's outbox, to whichever node serves the link when they are written.
final class RemoteLink: LinkEndpoint {
    let id: String
    let principal: String
    private let outbox: FleetOutbox

    init(id: String, principal: String, outbox: FleetOutbox) {
        self.id = id
        self.principal = principal
        self.outbox = outbox
    }

    func send(_ message: OutboundMessage, event: SessionEvent?) {
        outbox.send(RemoteDelivery(linkID: id, type: message.type, openBody: message.openBody, event: event?.encoded))
    }

    /// Passes on a message as another node queued it.
    func forward(_ delivery: RemoteDelivery) {
        outbox.send(delivery)
    }
}

/// What the copy of a session on another node is to do before the message that carries it
/// reaches its party: take the session up (its device's node runs its timers), count it
/// answered, or close it; or, for a link: a newer connection of its device replaced it, or its
/// client resumed on another node, which asks for it.
enum SessionEvent: Sendable, Equatable {
    case opened(StoredSession)
    case answered(sessionID: String)
    case closed(sessionID: String, reason: String, by: String)
    case replaced
    /// The link's client resumed on node `to`: hand the link over, unless it moved since the
    /// request (its `epoch` then is newer than the request's).
    case handover(to: String, epoch: Int64)
    /// A message the link's client sent through another node (`POST /api/link/send`).
    case fromLink
    /// End the session, telling both parties (an operator asked on another node).
    case ending(sessionID: String, reason: String)

    private struct Wire: Codable {
        var opened: StoredSession?
        var answered: String?
        var closed: [String]?
        var replaced: Bool?
        var handover: String?
        var epoch: Int64?
        var ending: [String]?
        var fromLink: Bool?
    }

    var encoded: String {
        var wire = Wire()
        switch self {
        case .opened(let session): wire.opened = session
        case .answered(let id): wire.answered = id
        case .closed(let id, let reason, let by): wire.closed = [id, reason, by]
        case .replaced: wire.replaced = true
        case .handover(let node, let epoch):
            wire.handover = node
            wire.epoch = epoch
        case .ending(let id, let reason): wire.ending = [id, reason]
        case .fromLink: wire.fromLink = true
        }
        return String(decoding: (try? JSONEncoder().encode(wire)) ?? Data(), as: UTF8.self)
    }

    init?(encoded text: String) {
        guard let wire = try? JSONDecoder().decode(Wire.self, from: Data(text.utf8)) else { return nil }
        if let session = wire.opened {
            self = .opened(session)
        } else if let id = wire.answered {
            self = .answered(sessionID: id)
        } else if let closed = wire.closed, closed.count == 3 {
            self = .closed(sessionID: closed[0], reason: closed[1], by: closed[2])
        } else if wire.replaced == true {
            self = .replaced
        } else if let node = wire.handover {
            self = .handover(to: node, epoch: wire.epoch ?? -1)
        } else if let ending = wire.ending, ending.count == 2 {
            self = .ending(sessionID: ending[0], reason: ending[1])
        } else if wire.fromLink == true {
            self = .fromLink
        } else {
            return nil
        }
    }
}
