/// A relay → client message, serialized once, with `seq` added as it is queued.

/// A relay → client message: its `type` and named fields in a fixed order. The link adds `seq`
/// when it queues the message, so the body is serialized once, without its closing brace.
public struct OutboundMessage: Sendable {
    public let type: String
    /// `{"type":"...",...` without the closing brace.
    public let openBody: String

    public init(_ type: String, _ fields: KeyValuePairs<String, JSONValue?>) {
        self.init(type, fields: fields.map { ($0.key, $0.value) })
    }

    public init(_ type: String, fields: [(String, JSONValue?)]) {
        var body = "{\"type\":"
        JSONValue.writeString(type, to: &body)
        for (key, value) in fields {
            guard let value else { continue }
            body += ","
            JSONValue.writeString(key, to: &body)
            body += ":"
            value.write(to: &body)
        }
        self.type = type
        self.openBody = body
    }

    /// A message as another node serialized it (`openBody` as that node's `openBody`).
    public init(type: String, openBody: String) {
        self.type = type
        self.openBody = openBody
    }

    /// The text frame carrying this message as number `seq` on its link (nil only for `hello`).
    public func text(seq: Int?) -> String {
        guard let seq else { return openBody + "}" }
        return openBody + Self.seqField(seq)
    }

    static func seqField(_ seq: Int) -> String { ",\"seq\":\(seq)}" }

    /// A frame made by `text(seq:)` carrying `seq` instead of the number it had.
    static func renumbered(_ text: String, to seq: Int) -> String {
        let marker = Array(",\"seq\":".utf8)
        let bytes = Array(text.utf8)
        var start = bytes.count - marker.count
        while start >= 0, !bytes[start..<start + marker.count].elementsEqual(marker) { start -= 1 }
        guard start >= 0 else { return text }
        return String(decoding: bytes[..<start], as: UTF8.self) + seqField(seq)
    }
}
