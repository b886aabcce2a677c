/// A client's messages as the relay accepts them (contract §3): decoded, validated, typed.

/// A message a client sent, validated: only the fields the contract names survive.
public enum ClientMessage: Sendable {
    case webrtcRequest(deviceID: String, ttl: Int?, metadata: JSONValue?)
    /// `webrtc_offer`, `webrtc_answer` or `webrtc_ice`, with the fields to forward (the
    /// sender's `cseq` as `peer_cseq` among them, contract §11).
    case negotiation(type: String, sessionID: String, fields: [(String, JSONValue?)])
    case close(sessionID: String, reason: String)
    case reject(sessionID: String, reason: String?)
    case ping
    case ack(seq: Int)
    case auth(token: String)
    case watch(deviceIDs: [String])
    case deviceInfo(capabilities: JSONValue)
    /// Contract §12: the control lease, commands through the relay, and the e-stop lane.
    case controlAcquire(sessionID: String, ttlMilliseconds: Int?, takeover: Bool)
    case controlRenew(sessionID: String, leaseID: String)
    case controlRelease(sessionID: String, leaseID: String)
    case control(sessionID: String, epoch: Int64, data: JSONValue)
    /// `device_id` is required of an app; a device raises or clears its own.
    case estop(deviceID: String?, reason: String?)
    case estopAck(estopID: String)
    case estopClear(deviceID: String?)

    /// The message's `type`, as the client spelled it.
    public var type: String {
        switch self {
        case .webrtcRequest: "webrtc_request"
        case .negotiation(let type, _, _): type
        case .close: "webrtc_close"
        case .reject: "webrtc_reject"
        case .ping: "ping"
        case .ack: "ack"
        case .auth: "auth"
        case .watch: "watch"
        case .deviceInfo: "device_info"
        case .controlAcquire: "control_acquire"
        case .controlRenew: "control_renew"
        case .controlRelease: "control_release"
        case .control: "control"
        case .estop: "estop"
        case .estopAck: "estop_ack"
        case .estopClear: "estop_clear"
        }
    }
}

/// A client message with the `request_id` to echo on whatever it causes, and the client's own
/// number for it (`cseq`, contract §11), if it sends reliably.
public struct ClientEnvelope: Sendable {
    public var message: ClientMessage
    public var requestID: String?
    public var cseq: Int?
    /// The highest `cseq` a client may send (2^53 - 1, the largest integer every JSON reader keeps exactly).
    public static let maxCSeq = 9_007_199_254_740_991.0
}

/// The error codes of contract §3.6.
public enum ErrorCode: String, Sendable {
    case badRequest = "bad_request"
    case unauthorized
    case deviceOffline = "device_offline"
    case deviceBusy = "device_busy"
    case unknownSession = "unknown_session"
    case turnError = "turn_error"
    case rateLimited = "rate_limited"
    /// Contract §12: someone else drives.
    case controlHeld = "control_held"
    /// Contract §12: the sender's role may not (drive, take over, clear).
    case forbidden
    /// Contract §12: an e-stop is raised.
    case estopped
    /// Contract §12: the lease named is no longer held.
    case controlLost = "control_lost"
    /// Contract §12: a command not from the holder with the current epoch.
    case notController = "not_controller"
}

/// An error answered on the link; the socket stays open.
public struct SignalingError: Error, Sendable {
    public var code: ErrorCode
    public var message: String
    public var sessionID: String?
    public var requestID: String?

    public init(_ code: ErrorCode, _ message: String, sessionID: String? = nil, requestID: String? = nil) {
        self.code = code
        self.message = message
        self.sessionID = sessionID
        self.requestID = requestID
    }

    public var outbound: OutboundMessage {
        OutboundMessage(
            "error",
            [
                "code": .string(code.rawValue),
                "message": .string(message),
                "session_id": sessionID.map(JSONValue.string),
                "request_id": requestID.map(JSONValue.string),
            ]
        )
    }
}

/// Field limits of contract §3.
public enum MessageLimits {
    public static let requestIDLength = 64
    public static let sessionIDLength = 64
    public static let sdpBytes = 64 * 1024
    public static let candidateBytes = 1024
    public static let sdpMidLength = 64
    public static let usernameFragmentBytes = 256
    public static let objectBytes = 4 * 1024
    public static let reasonLength = 256
    public static let watchedDevices = 256
    /// A session's ICE server ttl (seconds) a `webrtc_request` may ask for: TURN providers' own range.
    public static let ttlRange = 60...172_800
}

extension ClientEnvelope {
    /// Decodes and validates one text frame.
    public init(text: String) throws(SignalingError) {
        guard let object = try? JSONParser.object(text) else {
            throw SignalingError(.badRequest, "Message must be a JSON object")
        }
        try self.init(object: object)
    }

    /// Validates one message an HTTP request carried, already decoded with its body.
    public init(value: JSONValue) throws(SignalingError) {
        guard case .object(let object) = value else { throw SignalingError(.badRequest, "Message must be a JSON object") }
        try self.init(object: object)
    }

    /// Validates a decoded message object.
    public init(object: [String: JSONValue]) throws(SignalingError) {
        var requestID: String?
        if let value = object["request_id"] {
            guard let id = value.stringValue, id.count <= MessageLimits.requestIDLength else {
                throw SignalingError(.badRequest, "request_id must be a string of at most \(MessageLimits.requestIDLength) characters")
            }
            requestID = id
        }
        let fields = Fields(object: object, requestID: requestID)
        var cseq: Int?
        if let value = object["cseq"] {
            guard case .number(let number) = value, number.rounded() == number, number > 0 else {
                throw fields.error("cseq must be a positive integer")
            }
            // JSON numbers are exact up to 2^53 - 1 in every client language (RFC 8259 §6):
            // past it, two numbers a client meant as different could arrive as one.
            guard number <= Self.maxCSeq else { throw fields.error("cseq must be at most 9007199254740991 (2^53 - 1)") }
            cseq = Int(number)
        }
        self.cseq = cseq
        guard let type = object["type"] else { throw fields.error("type is required") }
        guard let type = type.stringValue else { throw fields.error("type must be a string") }
        self.requestID = requestID
        switch type {
        case "webrtc_request":
            let deviceID = try fields.string("device_id")
            var ttl: Int?
            if let value = object["ttl"] {
                guard let seconds = value.intValue, MessageLimits.ttlRange.contains(seconds) else {
                    throw fields.error("ttl must be an integer from \(MessageLimits.ttlRange.lowerBound) to \(MessageLimits.ttlRange.upperBound)")
                }
                ttl = seconds
            }
            let metadata = try fields.smallObject("metadata", required: false)
            message = .webrtcRequest(deviceID: deviceID, ttl: ttl, metadata: metadata)
        case "webrtc_offer", "webrtc_answer":
            let sessionID = try fields.sessionID()
            let sdp = try fields.string("sdp", maxBytes: MessageLimits.sdpBytes)
            message = .negotiation(
                type: type,
                sessionID: sessionID,
                fields: [("session_id", .string(sessionID)), ("sdp", .string(sdp)), ("peer_cseq", cseq.map { .number(Double($0)) })]
            )
        case "webrtc_ice":
            let sessionID = try fields.sessionID()
            var forwarded = try fields.candidates(sessionID: sessionID)
            if let cseq { forwarded.append(("peer_cseq", .number(Double(cseq)))) }
            message = .negotiation(type: type, sessionID: sessionID, fields: forwarded)
        case "webrtc_close":
            let sessionID = try fields.sessionID()
            message = .close(
                sessionID: sessionID,
                reason: try fields.optionalString("reason", maxLength: MessageLimits.reasonLength, sessionID: sessionID) ?? "normal"
            )
        case "webrtc_reject":
            let sessionID = try fields.sessionID()
            message = .reject(
                sessionID: sessionID,
                reason: try fields.optionalString("reason", maxLength: MessageLimits.reasonLength, sessionID: sessionID)
            )
        case "ping":
            message = .ping
        case "ack":
            guard let seq = object["seq"]?.intValue, seq >= 0 else { throw fields.error("seq must be a non-negative integer") }
            message = .ack(seq: seq)
        case "auth":
            message = .auth(token: try fields.string("token"))
        case "watch":
            message = .watch(deviceIDs: try fields.deviceIDs())
        case "device_info":
            message = .deviceInfo(capabilities: try fields.smallObject("capabilities", required: true)!)
        case "control_acquire", "control_renew", "control_release", "control", "estop", "estop_ack", "estop_clear":
            message = try fields.control(type)
        default:
            throw fields.error("Unknown message type '\(type.prefix(64))'")
        }
    }
}

/// Typed, bounded access to a message's fields; every failure is a `bad_request` naming the field.
private struct Fields {
    let object: [String: JSONValue]
    let requestID: String?

    func error(_ message: String, sessionID: String? = nil) -> SignalingError {
        SignalingError(.badRequest, message, sessionID: sessionID, requestID: requestID)
    }

    func string(_ name: String, maxBytes: Int = 4096) throws(SignalingError) -> String {
        guard let value = object[name] else { throw error("\(name) is required") }
        guard let string = value.stringValue else { throw error("\(name) must be a string") }
        guard string.utf8.count <= maxBytes else { throw error("\(name) is longer than \(maxBytes) bytes") }
        return string
    }

    func optionalString(_ name: String, maxLength: Int, sessionID: String?) throws(SignalingError) -> String? {
        guard let value = object[name], value != .null else { return nil }
        guard let string = value.stringValue, string.count <= maxLength else {
            throw error("\(name) must be a string of at most \(maxLength) characters", sessionID: sessionID)
        }
        return string
    }

    func sessionID() throws(SignalingError) -> String {
        guard let value = object["session_id"] else { throw error("session_id is required") }
        guard let id = value.stringValue, (1...MessageLimits.sessionIDLength).contains(id.count) else {
            throw error("session_id must be a string of 1 to \(MessageLimits.sessionIDLength) characters")
        }
        return id
    }

    func smallObject(_ name: String, required: Bool) throws(SignalingError) -> JSONValue? {
        guard let value = object[name] else {
            if required { throw error("\(name) is required") }
            return nil
        }
        guard case .object = value else { throw error("\(name) must be an object") }
        guard value.serialized.utf8.count <= MessageLimits.objectBytes else {
            throw error("\(name) is larger than \(MessageLimits.objectBytes) bytes")
        }
        return value
    }

    /// `candidate` (an object, or null for end of candidates), or a batch `candidates` with `complete`.
    func candidates(sessionID: String) throws(SignalingError) -> [(String, JSONValue?)] {
        var forwarded: [(String, JSONValue?)] = [("session_id", .string(sessionID))]
        if let value = object["candidate"] {
            forwarded.append(("candidate", value == .null ? .null : try candidate(value, sessionID: sessionID)))
        }
        if let value = object["candidates"] {
            guard case .array(let items) = value else { throw error("candidates must be an array", sessionID: sessionID) }
            var checked: [JSONValue] = []
            for item in items { checked.append(try candidate(item, sessionID: sessionID)) }
            forwarded.append(("candidates", .array(checked)))
        }
        if let value = object["complete"] {
            guard case .bool = value else { throw error("complete must be true or false", sessionID: sessionID) }
            forwarded.append(("complete", value))
        }
        guard forwarded.count > 1 else { throw error("webrtc_ice needs candidate, candidates or complete", sessionID: sessionID) }
        return forwarded
    }

    private func candidate(_ value: JSONValue, sessionID: String) throws(SignalingError) -> JSONValue {
        guard let fields = value.objectValue else { throw error("a candidate must be an object", sessionID: sessionID) }
        var checked: [String: JSONValue] = [:]
        guard let text = fields["candidate"]?.stringValue, text.utf8.count <= MessageLimits.candidateBytes else {
            throw error("candidate.candidate must be a string of at most \(MessageLimits.candidateBytes) bytes", sessionID: sessionID)
        }
        checked["candidate"] = .string(text)
        if let mid = fields["sdpMid"], mid != .null {
            guard let string = mid.stringValue, string.count <= MessageLimits.sdpMidLength else {
                throw error("sdpMid must be a string of at most \(MessageLimits.sdpMidLength) characters", sessionID: sessionID)
            }
            checked["sdpMid"] = mid
        }
        if let index = fields["sdpMLineIndex"], index != .null {
            guard let number = index.intValue, (0...255).contains(number) else {
                throw error("sdpMLineIndex must be an integer from 0 to 255", sessionID: sessionID)
            }
            checked["sdpMLineIndex"] = .number(Double(number))
        }
        if let fragment = fields["usernameFragment"], fragment != .null {
            guard let string = fragment.stringValue, string.utf8.count <= MessageLimits.usernameFragmentBytes else {
                throw error("usernameFragment must be a string of at most \(MessageLimits.usernameFragmentBytes) bytes", sessionID: sessionID)
            }
            checked["usernameFragment"] = fragment
        }
        return .object(checked)
    }
}

extension MessageLimits {
    /// A lease's ttl a `control_acquire` may ask for, in milliseconds (contract §12).
    public static let controlTTLMilliseconds = 200...60_000
    public static let leaseIDLength = 64
    public static let estopIDLength = 64
}

extension Fields {
    /// The messages of contract §12.
    func control(_ type: String) throws(SignalingError) -> ClientMessage {
        switch type {
        case "control_acquire":
            let sessionID = try sessionID()
            var ttl: Int?
            if let value = object["ttl_ms"], value != .null {
                guard let milliseconds = value.intValue, MessageLimits.controlTTLMilliseconds.contains(milliseconds) else {
                    let range = MessageLimits.controlTTLMilliseconds
                    throw error("ttl_ms must be an integer from \(range.lowerBound) to \(range.upperBound)", sessionID: sessionID)
                }
                ttl = milliseconds
            }
            var takeover = false
            if let value = object["takeover"], value != .null {
                guard case .bool(let flag) = value else { throw error("takeover must be true or false", sessionID: sessionID) }
                takeover = flag
            }
            return .controlAcquire(sessionID: sessionID, ttlMilliseconds: ttl, takeover: takeover)
        case "control_renew", "control_release":
            let sessionID = try sessionID()
            let leaseID = try identifier("lease_id", maxLength: MessageLimits.leaseIDLength, sessionID: sessionID)
            return type == "control_renew" ? .controlRenew(sessionID: sessionID, leaseID: leaseID) : .controlRelease(sessionID: sessionID, leaseID: leaseID)
        case "control":
            let sessionID = try sessionID()
            guard let number = object["epoch"]?.intValue, number >= 0 else { throw error("epoch must be a non-negative integer", sessionID: sessionID) }
            guard let data = try smallObject("data", required: true) else { throw error("data is required", sessionID: sessionID) }
            return .control(sessionID: sessionID, epoch: Int64(number), data: data)
        case "estop":
            let deviceID = try object["device_id"] == nil ? nil : string("device_id", maxBytes: 256)
            return .estop(deviceID: deviceID, reason: try optionalString("reason", maxLength: MessageLimits.reasonLength, sessionID: nil))
        case "estop_ack":
            return .estopAck(estopID: try identifier("estop_id", maxLength: MessageLimits.estopIDLength, sessionID: nil))
        default:
            let deviceID = try object["device_id"] == nil ? nil : string("device_id", maxBytes: 256)
            return .estopClear(deviceID: deviceID)
        }
    }

    /// `watch`'s `device_ids`: an array of at most `MessageLimits.watchedDevices` strings.
    func deviceIDs() throws(SignalingError) -> [String] {
        guard case .array(let values)? = object["device_ids"], values.count <= MessageLimits.watchedDevices else {
            throw error("device_ids must be an array of at most \(MessageLimits.watchedDevices) device ids")
        }
        let ids = values.compactMap(\.stringValue)
        guard ids.count == values.count else { throw error("device_ids must hold strings") }
        return ids
    }

    /// A required id of 1 to `maxLength` characters.
    func identifier(_ name: String, maxLength: Int, sessionID: String?) throws(SignalingError) -> String {
        guard let value = object[name] else { throw error("\(name) is required", sessionID: sessionID) }
        guard let id = value.stringValue, (1...maxLength).contains(id.count) else {
            throw error("\(name) must be a string of 1 to \(maxLength) characters", sessionID: sessionID)
        }
        return id
    }
}
