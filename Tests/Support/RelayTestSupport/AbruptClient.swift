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
