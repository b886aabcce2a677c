/// A JSON value, and JSON text written the way the relay writes it.

/// A JSON value as a client sent it, kept only to validate and forward named fields.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])
    /// Already-serialized JSON, spliced in as is (a credential document encoded once per session).
    case raw(String)

    public var stringValue: String? {
        if case .string(let value) = self { return value }
        return nil
    }

    public var objectValue: [String: JSONValue]? {
        if case .object(let value) = self { return value }
        return nil
    }

    /// The value as an integer, when it is a number with no fractional part.
    public var intValue: Int? {
        guard case .number(let value) = self, value.rounded() == value, abs(value) < 9e15 else { return nil }
        return Int(value)
    }

    /// Compact JSON text.
    public var serialized: String {
        var out = ""
        write(to: &out)
        return out
    }

    /// The length in bytes of `serialized`, counted without building it.
    public var serializedByteCount: Int {
        switch self {
        case .null: 4
        case .bool(let value): value ? 4 : 5
        case .number: serialized.utf8.count
        case .string(let value): Self.serializedByteCount(of: value)
        case .array(let values): 2 + max(0, values.count - 1) + values.reduce(0) { $0 + $1.serializedByteCount }
        case .object(let fields):
            2 + max(0, fields.count - 1) + fields.reduce(0) { $0 + Self.serializedByteCount(of: $1.key) + 1 + $1.value.serializedByteCount }
        case .raw(let text): text.utf8.count
        }
    }

    /// The length of a string as `writeString` writes it: quoted, with its escapes.
    public static func serializedByteCount(of value: String) -> Int {
        var count = 2
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"), 0x0A, 0x0D, 0x09: count += 2
            case ..<0x20: count += 6
            default: count += 1
            }
        }
        return count
    }

    public func write(to out: inout String) {
        switch self {
        case .null: out += "null"
        case .bool(let value): out += value ? "true" : "false"
        case .number(let value):
            if value.rounded() == value, abs(value) < 9e15 {
                out += String(Int(value))
            } else {
                out += "\(value)"
            }
        case .string(let value): Self.writeString(value, to: &out)
        case .array(let values):
            out += "["
            for (index, value) in values.enumerated() {
                if index > 0 { out += "," }
                value.write(to: &out)
            }
            out += "]"
        case .object(let fields):
            out += "{"
            for (index, key) in fields.keys.sorted().enumerated() {
                if index > 0 { out += "," }
                Self.writeString(key, to: &out)
                out += ":"
                fields[key]!.write(to: &out)
            }
            out += "}"
        case .raw(let text): out += text
        }
    }

    public static func writeString(_ value: String, to out: inout String) {
        var value = value
        value.withUTF8 { bytes in
            out += "\""
            // The common case, nothing to escape: one append.
            guard let first = bytes.firstIndex(where: { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") }) else {
                out += String(decoding: bytes, as: UTF8.self)
                out += "\""
                return
            }
            var escaped: [UInt8] = []
            escaped.reserveCapacity(bytes.count + 64)
            var run = 0
            for index in first..<bytes.count {
                let byte = bytes[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                // The bytes since the last escape, in one copy.
                escaped.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run..<index]))
                run = index + 1
                switch byte {
                case UInt8(ascii: "\""): escaped.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\"")])
                case UInt8(ascii: "\\"): escaped.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "\\")])
                case 0x0A: escaped.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "n")])
                case 0x0D: escaped.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "r")])
                case 0x09: escaped.append(contentsOf: [UInt8(ascii: "\\"), UInt8(ascii: "t")])
                default:
                    let hex = Array("0123456789abcdef".utf8)
                    escaped.append(contentsOf: [
                        UInt8(ascii: "\\"), UInt8(ascii: "u"), UInt8(ascii: "0"), UInt8(ascii: "0"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)],
                    ])
                }
            }
            escaped.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[run...]))
            out += String(decoding: escaped, as: UTF8.self)
            out += "\""
        }
    }
}
