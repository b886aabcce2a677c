import DeviceAuth
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import TURNBroker

/// What the application is built from besides its configuration: the parts tests and other
/// deployments may swap.
public struct RelayDependencies: Sendable {
    public var devices: any DeviceDirectory
    public var turn: (any TURNProvider)?

    public init(devices: any DeviceDirectory = InMemoryDeviceRegistry(), turn: (any TURNProvider)? = nil) {
        self.devices = devices
        self.turn = turn
    }
}

/// Builds the relay: routes, authentication, the switchboard and the server.
public func buildApplication(
    configuration: RelayConfiguration,
    dependencies: RelayDependencies = .init(),
    logger: Logger = Logger(label: "relay")
) -> some ApplicationProtocol {
    let verifier = AppTokenVerifier(configuration: configuration.tokens)
    let switchboard = Switchboard(
        table: LocalSessionTable(),
        turn: dependencies.turn ?? StaticProvider(stunURIs: configuration.stunURIs),
        directory: dependencies.devices,
        tokens: verifier,
        limits: .init(maxSessionsPerDevice: configuration.maxSessionsPerDevice, maxSessionsPerApp: configuration.maxSessionsPerApp),
        logger: logger
    )
    let connection = LinkConnection(
        switchboard: switchboard,
        maxMessageBytes: configuration.maxMessageBytes,
        mailboxMessages: configuration.resumeBufferMessages,
        mailboxBytes: configuration.resumeBufferBytes,
        heartbeatMilliseconds: configuration.heartbeatSeconds * 1000,
        resumeGraceMilliseconds: configuration.resumeGraceSeconds * 1000
    )
    let deviceAuthenticator = DeviceAuthenticator(
        directory: dependencies.devices,
        masterKey: configuration.deviceMasterKey,
        windowSeconds: configuration.deviceSignatureWindowSeconds
    )

    let router = Router(context: RelayRequestContext.self)
    router.get("/healthz") { _, _ in
        let counts = switchboard.table.counts
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: "{\"status\":\"ok\",\"links\":\(counts.links),\"sessions\":\(counts.sessions)}"))
        )
    }
    router.group("ws/app")
        .add(middleware: AppAuthenticationMiddleware(verifier: verifier))
        .ws(shouldUpgrade: requireUpgrade) { inbound, outbound, context in
            guard let identity = context.requestContext.identity else { return }
            try await connection.run(identity: identity, inbound: inbound, outbound: outbound, logger: context.logger)
        }
    router.group("ws/device")
        .add(middleware: DeviceAuthenticationMiddleware(authenticator: deviceAuthenticator))
        .ws(shouldUpgrade: requireUpgrade) { inbound, outbound, context in
            guard let identity = context.requestContext.identity else { return }
            try await connection.run(identity: identity, inbound: inbound, outbound: outbound, logger: context.logger)
        }

    return Application(
        router: router,
        server: .http1WebSocketUpgrade(
            webSocketRouter: router,
            configuration: .init(
                ws: .init(
                    maxFrameSize: configuration.maxMessageBytes,
                    autoPing: .enabled(timePeriod: .seconds(configuration.heartbeatSeconds)),
                    validateUTF8: true
                )
            )
        ),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "relay"),
        logger: logger
    )
}

/// A plain GET on a WebSocket path (no upgrade asked for) gets 426 instead of an empty 200.
@Sendable private func requireUpgrade(_ request: Request, _ context: RelayRequestContext) async throws -> RouterShouldUpgrade {
    guard request.headers[.upgrade]?.lowercased() == "websocket" else {
        throw RelayHTTPError(.upgradeRequired, "Connect with a WebSocket upgrade")
    }
    return .upgrade()
}
