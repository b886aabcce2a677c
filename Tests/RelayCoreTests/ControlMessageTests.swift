/// Contract §12's client messages as the relay reads them: what is accepted, and the `bad_request` for each malformed field.
import RelayCore
import Testing

@Suite struct ControlMessageTests {
    static func refusal(_ text: String) -> String? {
        do throws(SignalingError) {
            _ = try ClientEnvelope(text: text)
            return nil
        } catch {
            return error.code == .badRequest ? error.message : "\(error.code)"
        }
    }

    @Test func wellFormedControlMessagesAreRead() throws {
        let acquire = try ClientEnvelope(text: #"{"type":"control_acquire","session_id":"s1","ttl_ms":1500,"takeover":true,"request_id":"r1"}"#)
        guard case .controlAcquire("s1", 1500, true) = acquire.message else { Issue.record("\(acquire.message)"); return }
        #expect(acquire.requestID == "r1")
        guard case .controlAcquire("s1", nil, false) = try ClientEnvelope(text: #"{"type":"control_acquire","session_id":"s1"}"#).message else {
            Issue.record("defaults"); return
        }
        guard case .controlRenew("s1", "l1") = try ClientEnvelope(text: #"{"type":"control_renew","session_id":"s1","lease_id":"l1"}"#).message else {
            Issue.record("renew"); return
        }
        guard case .control("s1", 7, .object) = try ClientEnvelope(text: #"{"type":"control","session_id":"s1","epoch":7,"data":{"v":0.5}}"#).message else {
            Issue.record("control"); return
        }
        guard case .estop(nil, nil) = try ClientEnvelope(text: #"{"type":"estop"}"#).message else { Issue.record("a device's estop"); return }
        guard case .estop("robot-1", "person") = try ClientEnvelope(text: #"{"type":"estop","device_id":"robot-1","reason":"person"}"#).message else {
            Issue.record("an app's estop"); return
        }
        guard case .estopAck("e1") = try ClientEnvelope(text: #"{"type":"estop_ack","estop_id":"e1"}"#).message else { Issue.record("ack"); return }
    }

    @Test func eachMalformedFieldIsNamed() {
        #expect(Self.refusal(#"{"type":"control_acquire"}"#) == "session_id is required")
        #expect(Self.refusal(#"{"type":"control_acquire","session_id":"s1","ttl_ms":100}"#) == "ttl_ms must be an integer from 200 to 60000")
        #expect(Self.refusal(#"{"type":"control_acquire","session_id":"s1","ttl_ms":60001}"#) == "ttl_ms must be an integer from 200 to 60000")
        #expect(Self.refusal(#"{"type":"control_acquire","session_id":"s1","takeover":"yes"}"#) == "takeover must be true or false")
        #expect(Self.refusal(#"{"type":"control_renew","session_id":"s1"}"#) == "lease_id is required")
        #expect(Self.refusal(#"{"type":"control_release","session_id":"s1","lease_id":""}"#) == "lease_id must be a string of 1 to 64 characters")
        #expect(Self.refusal(#"{"type":"control","session_id":"s1","data":{}}"#) == "epoch must be a non-negative integer")
        #expect(Self.refusal(#"{"type":"control","session_id":"s1","epoch":1}"#) == "data is required")
        let big = String(repeating: "x", count: 4100)
        #expect(Self.refusal(#"{"type":"control","session_id":"s1","epoch":1,"data":{"v":"\#(big)"}}"#) == "data is larger than 4096 bytes")
        #expect(Self.refusal(#"{"type":"estop","device_id":7}"#) == "device_id must be a string")
        #expect(Self.refusal(#"{"type":"estop_ack"}"#) == "estop_id is required")
    }
}
