/// An echo server on the relay's WebSocket layer, for the Autobahn protocol cases (not part of the relay).
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import RelayWebSocket

/// A WebSocket echo server on the relay's own WebSocket layer (`RelayServerChannel` with the
/// relay's frame size, UTF-8 validation and pings), for protocol-compliance runs (Autobahn
/// through `kosoku`). Not part of `relay serve`.
func buildEchoApplication(host: String, port: Int, maxMessageBytes: Int = 64 * 1024, logger: Logger) -> some ApplicationProtocol {
    let gate = UpgradeGate { _, _, _ in .accept { EchoEndpoint() } }
    let webSocket = WebSocketConnection.Configuration(maxMessageBytes: maxMessageBytes, heartbeat: .seconds(20))
    let sockets = OpenSockets()
    return Application(
        router: Router(),
        server: HTTPServerBuilder { responder in
            WebSocketServerChannel(
                responder: responder,
                gate: gate,
                webSocket: webSocket,
                sockets: sockets,
                limits: HTTPLimits(),
                connections: ConnectionsPerAddress(limit: 10_000),
                addressing: ClientAddressing()
            )
        },
        configuration: .init(address: .hostname(host, port: port), serverName: "relay-echo"),
        services: [sockets],
        logger: logger
    )
}

/// Sends every message back as it came.
private final class EchoEndpoint: WebSocketEndpoint {
    private var socket: WebSocketConnection?

    func opened(_ connection: WebSocketConnection) { socket = connection }

    func received(text: String) {
        socket?.write(text: text)
        socket?.flush()
    }

    func receivedBinary(_ data: ByteBuffer) {
        socket?.write(binary: data)
        socket?.flush()
    }

    func writable() {}
    func closed() { socket = nil }
}
