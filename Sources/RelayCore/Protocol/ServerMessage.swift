/// The relay's messages to clients as typed values, each encoded in one place (contract §3-§11).

/// A relay → client message the switchboard sends, before it is serialized (`outbound`). The
/// field names and their order are the contract's, written here once.
public enum ServerMessage: Sendable {
    /// The first message on every new connection (§4), without `seq`.
    case hello(linkID: String, resumeToken: String, heartbeatMilliseconds: Int, resumeGraceMilliseconds: Int, resumed: Bool, ackedCSeq: Int?)
    /// The app's ICE servers for the session it asked for (§3.1).
    case credentials(sessionID: String, deviceID: String, iceServers: JSONValue, requestID: String?)
    /// The device hears of a session an app asked for (§3.1).
    case request(sessionID: String, userID: String, iceServers: JSONValue, metadata: JSONValue?)
    /// Fresh ICE servers for both parties (§3.4).
    case iceServersRefresh(sessionID: String, iceServers: JSONValue)
    /// The session ended: why, and who ended it (§3.3).
    case close(sessionID: String, reason: SessionCloseReason, by: SessionCloser, detail: String? = nil)
    /// The other party's link is `connected` again or `reconnecting` (§4).
    case peerStatus(sessionID: String, status: PeerStatus)
    /// A watched device's presence (§8).
    case deviceStatus(deviceID: String, online: Bool, sessions: Int)
    /// The relay is about to restart: reconnect after the delay (§11).
    case goAway(reconnectAfterMilliseconds: Int)
    case pong(requestID: String?)

    /// What `peer_status` says of the other party's link.
    public enum PeerStatus: String, Sendable {
        case connected
        case reconnecting
    }

    /// The message as its link queues it.
    public var outbound: OutboundMessage {
        switch self {
        case .hello(let linkID, let resumeToken, let heartbeat, let grace, let resumed, let acked):
            OutboundMessage(
                "hello",
                [
                    "link_id": .string(linkID),
                    "resume_token": .string(resumeToken),
                    "heartbeat_ms": .number(Double(heartbeat)),
                    "resume_grace_ms": .number(Double(grace)),
                    "resumed": .bool(resumed),
                    // Contract §11: what the client re-sends starts after this.
                    "acked_cseq": acked.map { .number(Double($0)) },
                ]
            )
        case .credentials(let sessionID, let deviceID, let iceServers, let requestID):
            OutboundMessage(
                "webrtc_credentials",
                [
                    "session_id": .string(sessionID),
                    "device_id": .string(deviceID),
                    "ice_servers": iceServers,
                    "request_id": requestID.map(JSONValue.string),
                ]
            )
        case .request(let sessionID, let userID, let iceServers, let metadata):
            OutboundMessage(
                "webrtc_request",
                ["session_id": .string(sessionID), "user_id": .string(userID), "ice_servers": iceServers, "metadata": metadata]
            )
        case .iceServersRefresh(let sessionID, let iceServers):
            OutboundMessage("ice_servers_refresh", ["session_id": .string(sessionID), "ice_servers": iceServers])
        case .close(let sessionID, let reason, let closer, let detail):
            OutboundMessage(
                "webrtc_close",
                [
                    "session_id": .string(sessionID),
                    "reason": .string(reason.rawValue),
                    "by": .string(closer.rawValue),
                    "detail": detail.map(JSONValue.string),
                ]
            )
        case .peerStatus(let sessionID, let status):
            OutboundMessage("peer_status", ["session_id": .string(sessionID), "status": .string(status.rawValue)])
        case .deviceStatus(let deviceID, let online, let sessions):
            OutboundMessage("device_status", ["device_id": .string(deviceID), "online": .bool(online), "sessions": .number(Double(sessions))])
        case .goAway(let delay):
            OutboundMessage("go_away", ["reconnect_after_ms": .number(Double(delay))])
        case .pong(let requestID):
            OutboundMessage("pong", ["request_id": requestID.map(JSONValue.string)])
        }
    }
}
