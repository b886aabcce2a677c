/// A plain TCP connection driven byte by byte, as attackers and broken clients drive theirs.
import Foundation

/// A blocking TCP socket to a loopback port: the test decides every byte it sends, when it
/// reads (or that it never does), and sees exactly how the relay ended the connection. Its
/// blocking calls run on a thread of their own (`onOwnThread`); one task uses it at a time.
public final class RawConnection: @unchecked Sendable {
    public struct Failure: Error, CustomStringConvertible {
        public var call: String
        public var code: Int32
        public var description: String { "\(call): \(String(cString: strerror(code)))" }
    }

    /// How the relay ended the connection.
    public enum Ending: Sendable, Equatable {
        /// A FIN: everything it sent was read.
        case closed
        /// A reset.
        case reset
    }

    private let fd: Int32
    /// Bytes read past the end of the last answer `exchange` returned.
    private var pending: [UInt8] = []

    private init(fd: Int32) { self.fd = fd }

    deinit { Glibc.close(fd) }

    /// Connects to `127.0.0.1:port`, from `source` when given (another loopback address), with a
    /// receive buffer of `receiveBuffer` bytes when given (a client that never reads fills it soon).
    public static func open(port: Int, source: String? = nil, receiveBuffer: Int32? = nil) throws -> RawConnection {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(call: "socket", code: errno) }
        let connection = RawConnection(fd: fd)
        if var size = receiveBuffer {
            guard setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size)) == 0 else { throw Failure(call: "setsockopt", code: errno) }
        }
        if let source {
            var local = address(source, port: 0)
            let bound = withUnsafePointer(to: &local) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
            guard bound == 0 else { throw Failure(call: "bind", code: errno) }
        }
        var remote = address("127.0.0.1", port: port)
        let connected = withUnsafePointer(to: &remote) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else { throw Failure(call: "connect", code: errno) }
        return connection
    }

    private static func address(_ host: String, port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        inet_pton(AF_INET, host, &address.sin_addr)
        return address
    }

    /// Sends all of `bytes` (blocking while the relay does not read).
    public func send(_ bytes: [UInt8]) throws {
        var offset = 0
        while offset < bytes.count {
            let sent = bytes[offset...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard sent > 0 else {
                if errno == EINTR { continue }
                throw Failure(call: "send", code: errno)
            }
            offset += sent
        }
    }

    public func send(_ text: String) throws { try send(Array(text.utf8)) }

    /// Reads what has arrived, waiting at most `timeout` for something: the bytes, or how the
    /// connection ended when it did (`closed` after its last bytes were read).
    public func receive(timeout: Duration) throws -> (bytes: [UInt8], ending: Ending?) {
        var poller = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        let milliseconds = Int32(timeout.components.seconds * 1000 + timeout.components.attoseconds / 1_000_000_000_000_000)
        let ready = poll(&poller, 1, milliseconds)
        guard ready > 0 else { return ([], nil) }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
        if count > 0 { return (Array(buffer[..<count]), nil) }
        if count == 0 { return ([], .closed) }
        if errno == ECONNRESET { return ([], .reset) }
        throw Failure(call: "recv", code: errno)
    }

    /// Reads until the relay ends the connection (at most `within`): everything it sent, and how
    /// it ended. Throws `TimedOut` when the connection is still open then.
    public func readUntilEnd(within: Duration) async throws -> (bytes: [UInt8], ending: Ending) {
        try await onOwnThread { [self] in
            let deadline = ContinuousClock.now + within
            var bytes: [UInt8] = []
            while ContinuousClock.now < deadline {
                let (more, ending) = try receive(timeout: min(.milliseconds(200), deadline - ContinuousClock.now))
                bytes += more
                if let ending { return (bytes, ending) }
            }
            throw TimedOut(what: "the relay to end the connection (\(within))")
        }
    }

    /// Sends `text` and reads the relay's answer up to the end of its headers (at most `within`).
    public func request(_ text: String, within: Duration = .seconds(10)) async throws -> String {
        try send(text)
        return try await onOwnThread { [self] in
            let deadline = ContinuousClock.now + within
            var bytes: [UInt8] = []
            while ContinuousClock.now < deadline {
                let (more, ending) = try receive(timeout: min(.milliseconds(200), deadline - ContinuousClock.now))
                bytes += more
                let text = String(decoding: bytes, as: UTF8.self)
                if text.contains("\r\n\r\n") || ending != nil { return text }
            }
            throw TimedOut(what: "an answer (\(within))")
        }
    }

    /// Blocking: sends one HTTP request and reads its answer, head and `Content-Length` body, so
    /// the connection can carry the next one (keep-alive).
    public func exchange(_ request: String) throws -> (head: String, body: String) {
        try send(request)
        let terminator = Array("\r\n\r\n".utf8)
        while true {
            if let end = pending.indices.first(where: { pending[$0...].starts(with: terminator) }) {
                let head = String(decoding: pending[..<end], as: UTF8.self)
                let length = head.split(separator: "\r\n").first { $0.lowercased().hasPrefix("content-length:") }
                    .flatMap { Int($0.split(separator: ":")[1].trimmingCharacters(in: .whitespaces)) } ?? 0
                if pending.count >= end + 4 + length {
                    let body = String(decoding: pending[(end + 4)..<(end + 4 + length)], as: UTF8.self)
                    pending.removeFirst(end + 4 + length)
                    return (head, body)
                }
            }
            let (more, ending) = try receive(timeout: .seconds(10))
            if ending != nil || more.isEmpty { throw Failure(call: "exchange", code: ending == .reset ? ECONNRESET : ETIMEDOUT) }
            pending += more
        }
    }

    /// Ends the connection with a reset (SO_LINGER 0) instead of a FIN.
    public func reset() {
        var lingering = linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lingering, socklen_t(MemoryLayout<linger>.size))
        shutdown(fd, Int32(SHUT_RDWR))
    }
}

/// WebSocket frames as bytes, for raw connections.
public enum RawFrame {
    public static let text: UInt8 = 0x1
    public static let close: UInt8 = 0x8
    public static let ping: UInt8 = 0x9
    public static let pong: UInt8 = 0xA

    /// The upgrade request for `pathAndQuery`.
    public static func upgradeRequest(port: Int, pathAndQuery: String, headers: String = "") -> String {
        "GET \(pathAndQuery) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\(headers)\r\n"
    }

    /// One final frame with a payload under 126 bytes, masked (as a client's must be) unless told.
    public static func make(_ opcode: UInt8, _ payload: [UInt8], masked: Bool = true) -> [UInt8] {
        precondition(payload.count < 126)
        guard masked else { return [0x80 | opcode, UInt8(payload.count)] + payload }
        let mask: [UInt8] = [0x12, 0x34, 0x56, 0x78]
        return [0x80 | opcode, 0x80 | UInt8(payload.count)] + mask + payload.enumerated().map { $0.element ^ mask[$0.offset % 4] }
    }

    /// The server's (unmasked) frames in `bytes`, after the HTTP answer's headers when there are
    /// some: opcode and payload of each whole frame.
    public static func parse(_ bytes: [UInt8]) -> [(opcode: UInt8, payload: [UInt8])] {
        var index = 0
        let terminator = Array("\r\n\r\n".utf8)
        if bytes.starts(with: Array("HTTP/".utf8)) {
            guard let end = bytes.indices.first(where: { bytes[$0...].starts(with: terminator) }) else { return [] }
            index = end + 4
        }
        var frames: [(UInt8, [UInt8])] = []
        while index + 2 <= bytes.count {
            var length = Int(bytes[index + 1] & 0x7F)
            var header = 2
            if length == 126 {
                guard index + 4 <= bytes.count else { break }
                length = Int(bytes[index + 2]) << 8 | Int(bytes[index + 3])
                header = 4
            } else if length == 127 {
                guard index + 10 <= bytes.count else { break }
                length = bytes[(index + 2)..<(index + 10)].reduce(0) { $0 << 8 | Int($1) }
                header = 10
            }
            guard index + header + length <= bytes.count else { break }
            frames.append((bytes[index] & 0x0F, Array(bytes[(index + header)..<(index + header + length)])))
            index += header + length
        }
        return frames
    }

    /// The code of the first close frame among `frames`.
    public static func closeCode(_ frames: [(opcode: UInt8, payload: [UInt8])]) -> UInt16? {
        guard let close = frames.first(where: { $0.opcode == Self.close }), close.payload.count >= 2 else { return nil }
        return UInt16(close.payload[0]) << 8 | UInt16(close.payload[1])
    }
}
