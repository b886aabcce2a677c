import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import WSCore

/// A WebSocket echo server on the relay's own WebSocket layer (`RelayServerChannel` with the
/// relay's frame size, UTF-8 validation and pings), for protocol-compliance runs (Autobahn
/// through `kosoku`). Not part of `relay serve`.
public func buildEchoApplication(host: String, port: Int, maxMessageBytes: Int = 64 * 1024, logger: Logger) -> some ApplicationProtocol {
    let gate = UpgradeGate { _, _, _ in
        .accept { inbound, outbound, _ in
            for try await message in inbound.messages(maxSize: maxMessageBytes) {
                switch message {
                case .text(let text): try await outbound.write(.text(text))
                case .binary(let bytes): try await outbound.write(.binary(bytes))
                }
            }
        }
    }
    let webSocket = WebSocketServerConfiguration(maxFrameSize: maxMessageBytes, autoPing: .enabled(timePeriod: .seconds(20)), validateUTF8: true)
    return Application(
        router: Router(),
        server: HTTPServerBuilder { responder in
            RelayServerChannel(responder: responder, gate: gate, webSocket: webSocket, idleTimeout: nil)
        },
        configuration: .init(address: .hostname(host, port: port), serverName: "relay-echo"),
        logger: logger
    )
}
