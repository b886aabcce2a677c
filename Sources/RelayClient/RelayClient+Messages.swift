/// The contract's messages as typed calls: offers, answers, candidates, hang-ups, device info, watches.
import RelayCore

extension RelayClient {
    @discardableResult
    public func sendOffer(session: String, sdp: String) -> Int {
        send("webrtc_offer", ["session_id": .string(session), "sdp": .string(sdp)])
    }

    @discardableResult
    public func sendAnswer(session: String, sdp: String) -> Int {
        send("webrtc_answer", ["session_id": .string(session), "sdp": .string(sdp)])
    }

    /// One candidate, or nil for the end of candidates.
    @discardableResult
    public func sendICE(session: String, candidate: ICECandidate?) -> Int {
        send("webrtc_ice", ["session_id": .string(session), "candidate": candidate?.json ?? .null])
    }

    /// A batch of candidates; `complete` when there are no more.
    @discardableResult
    public func sendICE(session: String, candidates: [ICECandidate], complete: Bool) -> Int {
        send("webrtc_ice", ["session_id": .string(session), "candidates": .array(candidates.map(\.json)), "complete": .bool(complete)])
    }

    @discardableResult
    public func closeSession(_ session: String, reason: String = "normal") -> Int {
        send("webrtc_close", ["session_id": .string(session), "reason": .string(reason)])
    }

    /// A device declines a session instead of offering.
    @discardableResult
    public func reject(session: String, reason: String = "busy") -> Int {
        send("webrtc_reject", ["session_id": .string(session), "reason": .string(reason)])
    }

    /// A device describes itself (`device_info`); send it again after `.linkReset`.
    @discardableResult
    public func describe(capabilities: [String: JSONValue]) -> Int {
        send("device_info", ["capabilities": .object(capabilities)])
    }

    /// An app asks for the presence of devices (`device_status` events).
    @discardableResult
    public func watch(devices: [String]) -> Int {
        send("watch", ["device_ids": .array(devices.map(JSONValue.string))])
    }
}
