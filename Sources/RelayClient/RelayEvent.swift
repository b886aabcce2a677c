/// What the relay sends a client, as typed values (contract §3), and the values a client sends.
import RelayCore

/// One message from the relay, as the client library delivers it.
public enum RelayEvent: Sendable, Equatable {
    /// The link is up: opened, or resumed after a drop (`hello.resumed`).
    case connected(Hello)
    /// The link could not be resumed and a new one began: its sessions and the messages it had
    /// not delivered are gone (end your peer connections; a device describes itself again).
    case linkReset
    /// A device is asked for a session (`webrtc_request`): answer with an offer, or reject it.
    case sessionRequested(SessionRequest)
    /// An app's session request was granted (`webrtc_credentials`).
    case credentials(SessionCredentials)
    case offer(SessionDescription)
    case answer(SessionDescription)
    case ice(ICECandidates)
    /// The session ended (`webrtc_close`): `by` is `app`, `device` or `relay`.
    case sessionClosed(sessionID: String, reason: String, by: String?)
    /// The other party's link dropped (`reconnecting`) or came back (`connected`).
    case peerStatus(sessionID: String, status: String)
    /// New ICE servers for a live session (`RTCPeerConnection.setConfiguration`).
    case iceServersRefresh(sessionID: String, iceServers: ICEServers)
    /// A device's presence, after `watch` (`device_status`).
    case deviceStatus(deviceID: String, online: Bool, sessions: Int)
    /// The relay is about to stop; the client resumes by itself (on `reconnectURL` if given).
    case goAway(reconnectAfterMilliseconds: Int, reconnectURL: String?)
    /// An error the relay answered one of this client's messages with; the link stays up.
    case error(RelayError)
    /// A message type this library does not know: its fields as sent.
    case other(type: String, fields: [String: JSONValue])
}

/// The relay's first message on every connection.
public struct Hello: Sendable, Equatable {
    public var linkID: String
    public var resumeToken: String
    public var resumed: Bool
    public var heartbeatMilliseconds: Int
    public var resumeGraceMilliseconds: Int
    /// On a resume: the highest `cseq` the relay holds safe.
    public var ackedCseq: Int
    public var fields: [String: JSONValue]

    init?(_ fields: [String: JSONValue]) {
        guard fields["type"]?.stringValue == "hello", let linkID = fields["link_id"]?.stringValue,
            let resumeToken = fields["resume_token"]?.stringValue
        else { return nil }
        self.linkID = linkID
        self.resumeToken = resumeToken
        self.resumed = fields["resumed"] == .bool(true)
        self.heartbeatMilliseconds = fields["heartbeat_ms"]?.intValue ?? 20_000
        self.resumeGraceMilliseconds = fields["resume_grace_ms"]?.intValue ?? 30_000
        self.ackedCseq = fields["acked_cseq"]?.intValue ?? 0
        self.fields = fields
    }
}

/// A credential document (contract §6): ICE servers for `RTCPeerConnection`.
public struct ICEServers: Sendable, Equatable {
    public struct Server: Sendable, Equatable {
        public var urls: [String]
        public var username: String?
        public var credential: String?
    }

    public var servers: [Server]
    /// Seconds the credentials are valid for, and their end (ISO 8601), when given.
    public var ttl: Int?
    public var expiresAt: String?
    /// The document as the relay sent it.
    public var json: JSONValue

    init(_ json: JSONValue?) {
        let document = json?.objectValue ?? [:]
        var servers: [Server] = []
        if case .array(let entries)? = document["iceServers"] {
            for entry in entries {
                guard let server = entry.objectValue else { continue }
                let urls: [String] =
                    switch server["urls"] {
                    case .string(let url)?: [url]
                    case .array(let list)?: list.compactMap(\.stringValue)
                    default: []
                    }
                servers.append(Server(urls: urls, username: server["username"]?.stringValue, credential: server["credential"]?.stringValue))
            }
        }
        self.servers = servers
        self.ttl = document["ttl"]?.intValue
        self.expiresAt = document["expiresAt"]?.stringValue
        self.json = json ?? .null
    }
}

/// `webrtc_request` as a device receives it.
public struct SessionRequest: Sendable, Equatable {
    public var sessionID: String
    public var userID: String
    public var iceServers: ICEServers
    public var metadata: [String: JSONValue]?
}

/// `webrtc_credentials` as an app receives it.
public struct SessionCredentials: Sendable, Equatable {
    public var sessionID: String
    public var deviceID: String
    public var iceServers: ICEServers
    public var requestID: String?
}

/// An offer or an answer.
public struct SessionDescription: Sendable, Equatable {
    public var sessionID: String
    public var sdp: String
}

/// One ICE candidate, as `RTCIceCandidate.toJSON()` gives it.
public struct ICECandidate: Sendable, Equatable {
    public var candidate: String
    public var sdpMid: String?
    public var sdpMLineIndex: Int?
    public var usernameFragment: String?

    public init(candidate: String, sdpMid: String? = nil, sdpMLineIndex: Int? = nil, usernameFragment: String? = nil) {
        self.candidate = candidate
        self.sdpMid = sdpMid
        self.sdpMLineIndex = sdpMLineIndex
        self.usernameFragment = usernameFragment
    }

    init?(_ json: JSONValue) {
        guard let fields = json.objectValue, let candidate = fields["candidate"]?.stringValue else { return nil }
        self.init(
            candidate: candidate,
            sdpMid: fields["sdpMid"]?.stringValue,
            sdpMLineIndex: fields["sdpMLineIndex"]?.intValue,
            usernameFragment: fields["usernameFragment"]?.stringValue
        )
    }

    var json: JSONValue {
        var fields: [String: JSONValue] = ["candidate": .string(candidate)]
        if let sdpMid { fields["sdpMid"] = .string(sdpMid) }
        if let sdpMLineIndex { fields["sdpMLineIndex"] = .number(Double(sdpMLineIndex)) }
        if let usernameFragment { fields["usernameFragment"] = .string(usernameFragment) }
        return .object(fields)
    }
}

/// Candidates from the other party; `complete` once it has no more (end of candidates).
public struct ICECandidates: Sendable, Equatable {
    public var sessionID: String
    public var candidates: [ICECandidate]
    public var complete: Bool
}

/// An `error` message (contract §3.6).
public struct RelayError: Sendable, Equatable, Error {
    public var code: String
    public var message: String
    public var sessionID: String?
    public var requestID: String?
}

/// Why a client stopped for good.
public enum RelayClientError: Error, Sendable, Equatable {
    /// The relay refused the credentials (401, 403): trying again will not help.
    case refused(status: Int, detail: String)
    /// Another connection of the same device replaced this one (close 4002).
    case replaced
    /// The client was closed.
    case closed
    /// The link could not be resumed, so a request sent on it will not be answered.
    case linkReset
    /// No answer to a request in time.
    case timedOut
}

extension RelayEvent {
    /// The typed event for a message (anything but `hello` and `ack`, which the client handles).
    init(_ fields: [String: JSONValue]) {
        let type = fields["type"]?.stringValue ?? ""
        let session = fields["session_id"]?.stringValue
        switch (type, session) {
        case ("webrtc_request", let session?):
            self = .sessionRequested(
                SessionRequest(
                    sessionID: session,
                    userID: fields["user_id"]?.stringValue ?? "",
                    iceServers: ICEServers(fields["ice_servers"]),
                    metadata: fields["metadata"]?.objectValue
                )
            )
        case ("webrtc_credentials", let session?):
            self = .credentials(
                SessionCredentials(
                    sessionID: session,
                    deviceID: fields["device_id"]?.stringValue ?? "",
                    iceServers: ICEServers(fields["ice_servers"]),
                    requestID: fields["request_id"]?.stringValue
                )
            )
        case ("webrtc_offer", let session?):
            self = .offer(SessionDescription(sessionID: session, sdp: fields["sdp"]?.stringValue ?? ""))
        case ("webrtc_answer", let session?):
            self = .answer(SessionDescription(sessionID: session, sdp: fields["sdp"]?.stringValue ?? ""))
        case ("webrtc_ice", let session?):
            var candidates: [ICECandidate] = []
            var complete = fields["complete"] == .bool(true)
            if case .array(let list)? = fields["candidates"] {
                candidates = list.compactMap(ICECandidate.init)
            } else if let single = fields["candidate"] {
                if let candidate = ICECandidate(single) { candidates = [candidate] } else { complete = true }
            }
            self = .ice(ICECandidates(sessionID: session, candidates: candidates, complete: complete))
        case ("webrtc_close", let session?):
            self = .sessionClosed(sessionID: session, reason: fields["reason"]?.stringValue ?? "", by: fields["by"]?.stringValue)
        case ("peer_status", let session?):
            self = .peerStatus(sessionID: session, status: fields["status"]?.stringValue ?? "")
        case ("ice_servers_refresh", let session?):
            self = .iceServersRefresh(sessionID: session, iceServers: ICEServers(fields["ice_servers"]))
        case ("device_status", _):
            self = .deviceStatus(
                deviceID: fields["device_id"]?.stringValue ?? "",
                online: fields["online"] == .bool(true),
                sessions: fields["sessions"]?.intValue ?? 0
            )
        case ("go_away", _):
            self = .goAway(reconnectAfterMilliseconds: fields["reconnect_after_ms"]?.intValue ?? 0, reconnectURL: fields["reconnect_url"]?.stringValue)
        case ("error", _):
            self = .error(
                RelayError(
                    code: fields["code"]?.stringValue ?? "",
                    message: fields["message"]?.stringValue ?? "",
                    sessionID: session,
                    requestID: fields["request_id"]?.stringValue
                )
            )
        default:
            self = .other(type: type, fields: fields)
        }
    }
}
