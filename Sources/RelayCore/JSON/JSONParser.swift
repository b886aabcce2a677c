/// The JSON parser of the per-message path: strict, one pass, bounded nesting.

/// A strict RFC 8259 parser from UTF-8 bytes to `JSONValue`, written for the per-message path:
/// one pass over the bytes, strings without escapes made in one copy, integers without a
/// detour through text. Nesting deeper than `maxDepth` is refused (no unbounded recursion on
/// a hostile message). Input is valid UTF-8 (a WebSocket text frame or a Swift string).
public struct JSONParser {
    public struct Failure: Error {}

    public static let maxDepth = 32

    /// Parses a whole text holding one JSON object.
    public static func object(_ text: String) throws(Failure) -> [String: JSONValue] {
        var text = text
        let result: Result<[String: JSONValue], Failure> = text.withUTF8 { bytes in
            var parser = JSONParser(bytes: UnsafeRawBufferPointer(bytes))
            do throws(Failure) {
                parser.skipSpace()
                guard parser.peek == UInt8(ascii: "{") else { throw Failure() }
                guard case .object(let object) = try parser.value(depth: 0) else { throw Failure() }
                parser.skipSpace()
                guard parser.index == bytes.count else { throw Failure() }
                return .success(object)
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    private let bytes: UnsafeRawBufferPointer
    private var index = 0

    private init(bytes: UnsafeRawBufferPointer) { self.bytes = bytes }

    private var peek: UInt8? { index < bytes.count ? bytes[index] : nil }

    private mutating func skipSpace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x09, 0x0A, 0x0D: index += 1
            default: return
            }
        }
    }

    private mutating func expect(_ literal: StaticString) throws(Failure) {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { throw Failure() }
        for offset in 0..<count where bytes[index + offset] != literal.utf8Start[offset] { throw Failure() }
        index += count
    }

    private mutating func value(depth: Int) throws(Failure) -> JSONValue {
        guard let byte = peek else { throw Failure() }
        switch byte {
        case UInt8(ascii: "{"):
            guard depth < Self.maxDepth else { throw Failure() }
            index += 1
            var object: [String: JSONValue] = [:]
            skipSpace()
            if peek == UInt8(ascii: "}") {
                index += 1
                return .object(object)
            }
            while true {
                skipSpace()
                guard peek == UInt8(ascii: "\"") else { throw Failure() }
                let key = try string()
                skipSpace()
                guard peek == UInt8(ascii: ":") else { throw Failure() }
                index += 1
                skipSpace()
                object[key] = try value(depth: depth + 1)
                skipSpace()
                guard let next = peek else { throw Failure() }
                index += 1
                if next == UInt8(ascii: "}") { return .object(object) }
                guard next == UInt8(ascii: ",") else { throw Failure() }
            }
        case UInt8(ascii: "["):
            guard depth < Self.maxDepth else { throw Failure() }
            index += 1
            var array: [JSONValue] = []
            skipSpace()
            if peek == UInt8(ascii: "]") {
                index += 1
                return .array(array)
            }
            while true {
                skipSpace()
                array.append(try value(depth: depth + 1))
                skipSpace()
                guard let next = peek else { throw Failure() }
                index += 1
                if next == UInt8(ascii: "]") { return .array(array) }
                guard next == UInt8(ascii: ",") else { throw Failure() }
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        default:
            return .number(try number())
        }
    }

    /// A string at `index` (its opening quote).
    private mutating func string() throws(Failure) -> String {
        index += 1
        let start = index
        // The common case: no escapes, one copy.
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                defer { index += 1 }
                return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
            }
            if byte == UInt8(ascii: "\\") { break }
            guard byte >= 0x20 else { throw Failure() }
            index += 1
        }
        guard index < bytes.count else { throw Failure() }
        var decoded: [UInt8] = []
        decoded.reserveCapacity(bytes.count - start)
        var run = start
        while index < bytes.count {
            let byte = bytes[index]
            if byte >= 0x20 && byte != UInt8(ascii: "\"") && byte != UInt8(ascii: "\\") {
                index += 1
                continue
            }
            // The bytes since the last escape, in one copy.
            decoded.append(contentsOf: UnsafeRawBufferPointer(rebasing: bytes[run..<index]))
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                return String(decoding: decoded, as: UTF8.self)
            case UInt8(ascii: "\\"):
                guard let escaped = peek else { throw Failure() }
                index += 1
                switch escaped {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): decoded.append(escaped)
                case UInt8(ascii: "b"): decoded.append(0x08)
                case UInt8(ascii: "f"): decoded.append(0x0C)
                case UInt8(ascii: "n"): decoded.append(0x0A)
                case UInt8(ascii: "r"): decoded.append(0x0D)
                case UInt8(ascii: "t"): decoded.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try hex4()
                    if (0xD800...0xDBFF).contains(scalar) {
                        // A high surrogate must be followed by an escaped low one.
                        try expect("\\u")
                        let low = try hex4()
                        guard (0xDC00...0xDFFF).contains(low) else { throw Failure() }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if (0xDC00...0xDFFF).contains(scalar) {
                        throw Failure()
                    }
                    decoded.append(contentsOf: String(Unicode.Scalar(scalar)!).utf8)
                default:
                    throw Failure()
                }
                run = index
            default:
                // A control character, unescaped.
                throw Failure()
            }
        }
        throw Failure()
    }

    private mutating func hex4() throws(Failure) -> UInt32 {
        guard index + 4 <= bytes.count else { throw Failure() }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw Failure()
            }
            value = value << 4 | UInt32(digit)
            index += 1
        }
        return value
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    private mutating func number() throws(Failure) -> Double {
        let start = index
        var negative = false
        if peek == UInt8(ascii: "-") {
            negative = true
            index += 1
        }
        guard let first = peek, isDigit(first) else { throw Failure() }
        var integer: Int = 0
        var digits = 0
        if first == UInt8(ascii: "0") {
            index += 1
        } else {
            while let byte = peek, isDigit(byte) {
                if digits < 18 { integer = integer * 10 + Int(byte - UInt8(ascii: "0")) }
                digits += 1
                index += 1
            }
        }
        var plainInteger = digits <= 15
        if peek == UInt8(ascii: ".") {
            plainInteger = false
            index += 1
            guard let byte = peek, isDigit(byte) else { throw Failure() }
            while let byte = peek, isDigit(byte) { index += 1 }
        }
        if peek == UInt8(ascii: "e") || peek == UInt8(ascii: "E") {
            plainInteger = false
            index += 1
            if peek == UInt8(ascii: "+") || peek == UInt8(ascii: "-") { index += 1 }
            guard let byte = peek, isDigit(byte) else { throw Failure() }
            while let byte = peek, isDigit(byte) { index += 1 }
        }
        if plainInteger { return negative ? -Double(integer) : Double(integer) }
        let text = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
        guard let value = Double(text), value.isFinite else { throw Failure() }
        return value
    }

    private func isDigit(_ byte: UInt8) -> Bool { byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9") }
}
