/// JSON values as the relay writes them: the byte count used for HTTP message limits matches the text.
import RelayCore
import Testing

@Suite struct JSONValueTests {
    @Test(arguments: [
        JSONValue.null, .bool(true), .bool(false), .number(0), .number(-12), .number(1.5), .number(1e300),
        .string(""), .string("plain"), .string("quote \" backslash \\ newline \n tab \t return \r bell \u{07} nul \u{00}"),
        .string("héllo ✓ 😀"), .array([]), .array([.number(1), .string("a"), .null]),
        .object([:]), .object(["b": .array([.object(["c\n": .bool(true)])]), "a": .string("x")]), .raw(#"{"k":[1,2]}"#),
    ])
    func theCountedSizeOfAValueIsTheSizeOfItsText(_ value: JSONValue) {
        #expect(value.serializedByteCount == value.serialized.utf8.count, "\(value.serialized)")
    }

    @Test func aMessageObjectIsParsedOnceWhateverCarriedIt() throws {
        let text = #"{"type":"webrtc_ice","session_id":"s1","candidate":null,"request_id":"r1"}"#
        let fromText = try ClientEnvelope(text: text)
        let fromValue = try ClientEnvelope(value: .object(try JSONParser.object(text)))
        #expect(fromText.message.type == "webrtc_ice" && fromValue.message.type == "webrtc_ice")
        #expect(fromText.requestID == "r1" && fromValue.requestID == "r1")
        #expect(throws: SignalingError.self) { try ClientEnvelope(value: .array([])) }
    }
}
