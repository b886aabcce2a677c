/// The relay's HTTP server: our WebSocket channel over Hummingbird's HTTP/1.1, with the edge's limits.
import Hummingbird
import HummingbirdCore
import RelayWebSocket

/// The server child channel every connection gets: the first request decides (an upgrade goes
/// through `gate`), with the HTTP limits, the per-address connection cap (not for a trusted
/// proxy, which carries many clients; a connection over it is answered 429 and counted), the
/// client address as the edge gives it, and TLS when configured.
enum RelayServer {
    static func builder(configuration: RelayConfiguration, gate: UpgradeGate, sockets: OpenSockets, metrics: RelayMetrics) -> HTTPServerBuilder {
        let addressing = configuration.addressing
        let connections = ConnectionsPerAddress(
            limit: configuration.maxConnectionsPerAddress,
            exempt: addressing.isTrusted,
            refused: { metrics.connectionRefused("per_address_cap") }
        )
        let webSocket = WebSocketConnection.Configuration(
            maxMessageBytes: configuration.maxMessageBytes,
            heartbeat: .seconds(configuration.heartbeatSeconds),
            closeTimeout: .seconds(10)
        )
        return HTTPServerBuilder { responder in
            WebSocketServerChannel(
                responder: responder,
                gate: gate,
                webSocket: webSocket,
                sockets: sockets,
                limits: configuration.http,
                connections: connections,
                addressing: addressing,
                tls: configuration.tls
            )
        }
    }
}
