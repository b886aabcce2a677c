import NIOCore

/// Reads the few fields the load generator needs straight from a relay message's bytes. The
/// relay writes every message as `{"type":"...",...,"seq":N}`, so no JSON decoder is needed.
enum Wire {
    /// The message's `type`.
    static func type(_ bytes: UnsafeRawBufferPointer) -> Substring {
        string(after: typeKey, in: bytes).map { Substring($0) } ?? ""
    }

    /// The value of a string field `"name":"value"` (no escapes in the values read here).
    static func string(after key: [UInt8], in bytes: UnsafeRawBufferPointer) -> String? {
        guard let start = find(key, in: bytes) else { return nil }
        var end = start
        while end < bytes.count, bytes[end] != UInt8(ascii: "\"") { end += 1 }
        return String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<end]), as: UTF8.self)
    }

    /// The `seq` at the end of a numbered message, or nil.
    static func seq(_ bytes: UnsafeRawBufferPointer) -> Int? {
        var index = bytes.count - 2
        var value = 0
        var scale = 1
        while index >= 0, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            value += Int(bytes[index] - UInt8(ascii: "0")) * scale
            scale *= 10
            index -= 1
        }
        guard scale > 1, index >= 5, bytes[index] == UInt8(ascii: ":"), bytes[index - 1] == UInt8(ascii: "\"") else { return nil }
        return value
    }

    /// The send time the load generator wrote after `lt=` in a candidate or SDP, or nil.
    static func sendTime(_ bytes: UnsafeRawBufferPointer) -> UInt64? {
        guard var index = find(timeKey, in: bytes) else { return nil }
        var value: UInt64 = 0
        while index < bytes.count, bytes[index] >= UInt8(ascii: "0"), bytes[index] <= UInt8(ascii: "9") {
            value = value * 10 + UInt64(bytes[index] - UInt8(ascii: "0"))
            index += 1
        }
        return value
    }

    /// The index just past the first occurrence of `needle`.
    static func find(_ needle: [UInt8], in bytes: UnsafeRawBufferPointer) -> Int? {
        guard needle.count <= bytes.count, let first = needle.first else { return nil }
        var index = 0
        let last = bytes.count - needle.count
        outer: while index <= last {
            if bytes[index] == first {
                for offset in 1..<needle.count where bytes[index + offset] != needle[offset] {
                    index += 1
                    continue outer
                }
                return index + needle.count
            }
            index += 1
        }
        return nil
    }

    static let typeKey = Array("\"type\":\"".utf8)
    static let sessionKey = Array("\"session_id\":\"".utf8)
    static let timeKey = Array("lt=".utf8)

    /// A trickled ICE candidate of about 200 bytes on the wire, to stamp with a send time.
    static func ice(session: String) -> Stamped {
        Stamped(
            prefix:
                #"{"type":"webrtc_ice","session_id":"\#(session)","candidate":{"candidate":"candidate:1467250027 1 udp 2122260223 192.168.0.196 46243 typ host generation 0 ufrag 3Dg5 lt="#,
            suffix: #"","sdpMid":"0","sdpMLineIndex":0}}"#
        )
    }

    /// An offer or answer whose SDP is about `bytes` long, in CRLF-separated lines, to stamp.
    static func sdp(_ type: String, session: String, bytes: Int) -> Stamped {
        sdp(type, session: session, lines: sdpLines(bytes))
    }

    /// The same with the lines made once (`sdpLines`).
    static func sdp(_ type: String, session: String, lines: String) -> Stamped {
        Stamped(
            prefix: #"{"type":"\#(type)","session_id":"\#(session)","sdp":"v=0\r\no=- 4611731400430051336 2 IN IP4 127.0.0.1 lt="#,
            suffix: lines + "\"}"
        )
    }

    /// SDP lines (JSON-escaped CRLFs) of about `bytes`.
    static func sdpLines(_ bytes: Int) -> String {
        var lines = "\\r\\ns=-\\r\\nt=0 0\\r\\n"
        var line = 0
        while lines.utf8.count + 60 < bytes {
            lines += "a=candidate:\(line) 1 udp 2122260223 192.168.0.196 \(40000 + line) typ host generation 0\\r\\n"
            line += 1
        }
        return lines
    }
}

/// A message with a send time spliced in after `lt=`.
struct Stamped {
    var prefix: String
    var suffix: String

    func text(_ time: UInt64) -> String { prefix + String(time) + suffix }
}
