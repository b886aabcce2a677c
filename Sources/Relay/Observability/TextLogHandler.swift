/// The default log format: one line per event, every value escaped so no client can write a line of its own.
import Logging

/// Writes each log event to standard error as one line, in swift-log's `StreamLogHandler`
/// layout: `2026-12-07T10:12:03.123Z info relay : link.id=... user.id=alice [Relay] Session closed`.
/// Values come from clients (a token's `sub`, a device id, a close reason), so the message and
/// every value are escaped: a backslash, a line break or any other control character becomes
/// an escape (`\n`, `\u{1B}`), and a value holding a space, `=` or `"` is quoted. One event is
/// one line, whatever it holds.
public struct TextLogHandler: LogHandler {
    public var metadata: Logger.Metadata = [:]
    public var logLevel: Logger.Level = .info
    private let label: String

    public init(label: String) {
        self.label = label
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        var line = "\(JSONLogHandler.timestamp()) \(event.level.rawValue) \(Self.escaped(label)) :"
        let merged = metadata.merging(event.metadata ?? [:]) { _, new in new }
        for key in merged.keys.sorted() {
            line += " \(Self.escaped(key))=\(Self.value(merged[key]!))"
        }
        line += " [\(Self.escaped(event.source))] \(Self.escaped(event.message.description))\n"
        StandardError.write(line)
    }

    private static func value(_ value: Logger.MetadataValue) -> String {
        let text: String
        switch value {
        case .string(let string): text = string
        case .stringConvertible(let convertible): text = convertible.description
        case .array(let values): return "[" + values.map(Self.value).joined(separator: ", ") + "]"
        case .dictionary(let entries): return "[" + entries.keys.sorted().map { "\(Self.escaped($0)): \(Self.value(entries[$0]!))" }.joined(separator: ", ") + "]"
        }
        let plain = escaped(text)
        guard plain.isEmpty || plain.contains(where: { $0 == " " || $0 == "=" || $0 == "\"" }) else { return plain }
        var quoted = "\""
        for character in plain { quoted += character == "\"" ? "\\\"" : String(character) }
        return quoted + "\""
    }

    /// `text` with backslashes, line breaks and every other control character (C0, DEL, C1,
    /// and the Unicode line and paragraph separators) written as escapes.
    static func escaped(_ text: String) -> String {
        guard text.unicodeScalars.contains(where: needsEscape) else { return text }
        var out = ""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where needsEscape(scalar): out += "\\u{\(String(scalar.value, radix: 16, uppercase: true))}"
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    private static func needsEscape(_ scalar: Unicode.Scalar) -> Bool {
        scalar == "\\" || scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value) || scalar.value == 0x2028 || scalar.value == 0x2029
    }
}
