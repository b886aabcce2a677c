import DeviceAuth
import Foundation
import OpenSSLCrypto
import Synchronization

/// Who is at the other end of a link.
public enum Party: String, Sendable {
    case app
    case device
}

/// One logical client connection: an identity, the link's own `seq` numbering and mailbox, and
/// the sessions it takes part in. A transport (today a WebSocket) attaches to it; keeping the
/// link separate from the socket is what lets a later resume re-attach a new socket to it.
public final class Link: Sendable {
    public let id: String
    public let resumeToken: String
    public let party: Party
    /// The user id for an app, the device id for a device.
    public let principal: String
    let mailbox: Mailbox

    private struct State {
        var app: AppIdentity?
        var sessions: [String: Session] = [:]
        var capabilities: JSONValue?
    }

    private let state: Mutex<State>

    init(party: Party, principal: String, app: AppIdentity?, mailbox: Mailbox) {
        self.id = UUID().uuidString.lowercased()
        self.resumeToken = Base64URL.encode(LibCrypto.randomBytes(32))
        self.party = party
        self.principal = principal
        self.mailbox = mailbox
        self.state = Mutex(State(app: app))
    }

    static func app(_ identity: AppIdentity, mailbox: Mailbox) -> Link {
        Link(party: .app, principal: identity.userID, app: identity, mailbox: mailbox)
    }

    static func device(_ deviceID: String, mailbox: Mailbox) -> Link {
        Link(party: .device, principal: deviceID, app: nil, mailbox: mailbox)
    }

    /// The app's current token identity (nil for devices).
    var appIdentity: AppIdentity? { state.withLock { $0.app } }

    func replaceAppIdentity(_ identity: AppIdentity) {
        state.withLock { $0.app = identity }
    }

    var capabilities: JSONValue? {
        get { state.withLock { $0.capabilities } }
        set { state.withLock { $0.capabilities = newValue } }
    }

    /// Queues a message for the client; never waits.
    @discardableResult
    func send(_ message: OutboundMessage) -> Mailbox.Offer {
        mailbox.offer(message)
    }

    /// Adds `session` unless the link already takes part in `limit` sessions.
    func join(_ session: Session, limit: Int) -> Bool {
        state.withLock { state in
            guard state.sessions.count < limit else { return false }
            state.sessions[session.id] = session
            return true
        }
    }

    func leave(_ session: Session) {
        _ = state.withLock { $0.sessions.removeValue(forKey: session.id) }
    }

    /// The session with `id`, only when this link is one of its parties.
    func session(_ id: String) -> Session? {
        state.withLock { $0.sessions[id] }
    }

    /// Removes and returns every session of the link (when the link ends).
    func leaveAll() -> [Session] {
        state.withLock { state in
            defer { state.sessions.removeAll() }
            return Array(state.sessions.values)
        }
    }

    var sessionCount: Int { state.withLock { $0.sessions.count } }
}
