import Foundation
import NIOCore
import NIOPosix

/// WebSocket clients that misbehave as real networks and firmware do, on raw TCP connections.
public enum AbruptClient {
    public struct UpgradeRefused: Error {
        public var response: String
    }

    /// How a connection ends without a WebSocket close frame.
    public enum Ending: Sendable {
        /// A TCP reset (SO_LINGER 0), as when a network path dies.
        case reset
        /// A plain TCP close (FIN), as when a client process drops its socket (`abort()`).
        case fin
    }

    /// Opens a WebSocket, waits for `101 Switching Protocols` and the relay's first frame, then
    /// ends the TCP connection with `ending`: no close frame, as when a robot loses its network.
    public static func connectThenDrop(port: Int, pathAndQuery: String, ending: Ending = .reset) async throws {
        let (channel, request) = try await open(port: port, pathAndQuery: pathAndQuery)
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: request))
            var received = ByteBuffer()
            for try await var chunk in inbound {
                received.writeBuffer(&chunk)
                let text = String(buffer: received)
                guard let end = text.range(of: "\r\n\r\n") else { continue }
                guard text.hasPrefix("HTTP/1.1 101") else { throw UpgradeRefused(response: text) }
                // The hello frame follows the headers; once it is here the link is attached.
                if text.utf8.count > text[..<end.upperBound].utf8.count + 2 { break }
            }
            if ending == .reset {
                // SO_LINGER 0: close sends a reset instead of a FIN.
                try await (channel.channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
            }
        }
    }

    /// Opens a WebSocket and then never answers anything, pings included, until the relay ends
    /// the connection; returns how long that took.
    public static func connectAndStaySilent(port: Int, pathAndQuery: String) async throws -> Duration {
        let (channel, request) = try await open(port: port, pathAndQuery: pathAndQuery)
        let start = ContinuousClock.now
        try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: request))
            // Read (so TCP flows) and ignore everything until the relay closes the connection.
            for try await _ in inbound {}
        }
        return ContinuousClock.now - start
    }

    /// Opens a WebSocket, sends one text frame without a mask (as no client may), and reads
    /// until the relay closes: the code of the close frame it sent, if any.
    public static func sendUnmaskedFrame(port: Int, pathAndQuery: String, text: String) async throws -> UInt16? {
        let (channel, request) = try await open(port: port, pathAndQuery: pathAndQuery)
        return try await channel.executeThenClose { inbound, outbound in
            try await outbound.write(ByteBuffer(string: request))
            var frame = ByteBuffer(bytes: [0x81, UInt8(text.utf8.count)])
            frame.writeString(text)
            try await outbound.write(frame)
            var received = ByteBuffer()
            for try await chunk in inbound {
                var chunk = chunk
                received.writeBuffer(&chunk)
            }
            // Skip the 101 answer, then walk the server's (unmasked) frames to the close.
            let bytes = Array(received.readableBytesView)
            guard let end = bytes.indices.first(where: { Array(bytes[$0..<min($0 + 4, bytes.count)]) == Array("\r\n\r\n".utf8) }) else {
                return nil
            }
            var index = end + 4
            while index + 2 <= bytes.count {
                let opcode = bytes[index] & 0x0F
                var length = Int(bytes[index + 1] & 0x7F)
                var header = 2
                if length == 126, index + 4 <= bytes.count {
                    length = Int(bytes[index + 2]) << 8 | Int(bytes[index + 3])
                    header = 4
                }
                if opcode == 0x8, length >= 2, index + header + 2 <= bytes.count {
                    return UInt16(bytes[index + header]) << 8 | UInt16(bytes[index + header + 1])
                }
                index += header + length
            }
            return nil
        }
    }

    /// Sends `POST path` with a JSON `body` and resets the connection without reading the
    /// answer: an HTTP client (a long poll) that vanishes mid-request.
    public static func postThenVanish(port: Int, path: String, body: String) async throws {
        let (channel, _) = try await open(port: port, pathAndQuery: path)
        try await channel.executeThenClose { _, outbound in
            try await outbound.write(
                ByteBuffer(
                    string: "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nContent-Type: application/json\r\n"
                        + "Content-Length: \(body.utf8.count)\r\n\r\n\(body)"
                )
            )
            try await (channel.channel as? any SocketOptionProvider)?.setSoLinger(linger(l_onoff: 1, l_linger: 0)).get()
        }
    }

    /// A raw TCP connection to the relay and the upgrade request to send on it.
    private static func open(port: Int, pathAndQuery: String) async throws -> (NIOAsyncChannel<ByteBuffer, ByteBuffer>, String) {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel)
                }
            }
        let request =
            "GET \(pathAndQuery) HTTP/1.1\r\nHost: 127.0.0.1:\(port)\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        return (channel, request)
    }
}
