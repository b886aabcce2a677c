/// The server's connections: HTTP/1.1 to the router, WebSocket upgrades through a gate, and the open sockets.

// Adapted from hummingbird-websocket's HTTP1WebSocketUpgradeChannel (Apache-2.0, Copyright (c)
// the Hummingbird authors). That channel answers every refused upgrade with a fixed status and
// no body; the relay's contract needs the refusal's own status and `{"detail": ...}` so a robot
// developer can tell an expired token from a stale clock. This channel keeps the refusal the
// gate produced and writes it.

import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import ServiceLifecycle
import Synchronization

/// Decides whether a WebSocket upgrade request may proceed, before the upgrade.
public struct UpgradeGate: Sendable {
    public enum Decision: Sendable {
        /// Upgrade and run the endpoint this makes (on the socket's event loop).
        case accept(@Sendable () -> any WebSocketEndpoint)
        /// Answer with this instead of upgrading.
        case refuse(UpgradeRefusal)
    }

    /// Decides for a request from a client at an IP address (the edge's `ClientAddressing`:
    /// the peer's, or what a trusted proxy says; nil when unknown).
    let decide: @Sendable (Request, String?, Logger) async -> Decision

    public init(decide: @escaping @Sendable (Request, String?, Logger) async -> Decision) {
        self.decide = decide
    }
}

/// The HTTP answer to an upgrade that may not proceed: a status, headers and a JSON body.
public struct UpgradeRefusal: Error, Sendable {
    public var status: HTTPResponse.Status
    public var headers: HTTPFields
    /// JSON text.
    public var body: String

    public init(status: HTTPResponse.Status, headers: HTTPFields = [:], body: String) {
        self.status = status
        self.headers = headers
        self.body = body
    }
}

/// A server child channel: HTTP/1.1 requests go to the router; WebSocket upgrade requests go
/// through the `UpgradeGate`, and a refusal is written with its status and JSON body.
public struct WebSocketServerChannel: ServerChildChannel, HTTPChannelHandler {
    public enum UpgradeResult: Sendable {
        /// The socket runs as a `WebSocketConnection` on its event loop until it closes.
        case websocket(any Channel, NIOLoopBound<WebSocketConnection>)
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, UpgradeRefusal)
    }

    public struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        public let channel: any Channel
    }

    public let responder: HTTPChannelHandler.Responder
    let gate: UpgradeGate
    let webSocket: WebSocketConnection.Configuration
    /// Keeps each upgraded socket until it closes, for a graceful shutdown.
    let sockets: OpenSockets
    let limits: HTTPLimits
    let connections: ConnectionsPerAddress
    let addressing: ClientAddressing
    /// TLS for every connection (`https://`, `wss://`); nil: plain.
    let tls: ServerTLS?

    public init(
        responder: @escaping HTTPChannelHandler.Responder,
        gate: UpgradeGate,
        webSocket: WebSocketConnection.Configuration,
        sockets: OpenSockets,
        limits: HTTPLimits,
        connections: ConnectionsPerAddress,
        addressing: ClientAddressing,
        tls: ServerTLS? = nil
    ) {
        self.responder = responder
        self.gate = gate
        self.webSocket = webSocket
        self.sockets = sockets
        self.limits = limits
        self.connections = connections
        self.addressing = addressing
        self.tls = tls
    }

    public func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        guard connections.admit(channel) else {
            // Over its address's cap: closed before anything is read. (Failing the setup instead
            // would reach the server's accept loop as an error.)
            channel.close(promise: nil)
            return channel.eventLoop.makeSucceededFuture(Value(upgradeResult: channel.eventLoop.makeFailedFuture(ChannelError.inputClosed), channel: channel))
        }
        return channel.eventLoop.makeCompletedFuture {
            try channel.syncOptions?.setOption(
                ChannelOptions.recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536)
            )
            // Both boxes are written and read on the channel's event loop: the gate's decision is
            // carried from `shouldUpgrade` to the upgrade (or to the refusal) without deciding twice,
            // which would spend a device's nonce twice.
            let accepted = NIOLoopBoundBox<(@Sendable () -> any WebSocketEndpoint)?>(nil, eventLoop: channel.eventLoop)
            let refusal = NIOLoopBoundBox<UpgradeRefusal?>(nil, eventLoop: channel.eventLoop)
            var logger = logger
            logger[metadataKey: "hb.request.id"] = .stringConvertible(RequestID())
            let configuration = webSocket
            let gate = gate
            let addressing = addressing
            if let peer = channel.remoteAddress?.ipAddress, addressing.isTrusted(peer) {
                // A proxy may say who its client is in a PROXY protocol header first.
                try channel.pipeline.syncOperations.addHandler(ProxyHeaderReader())
            }
            // TLS after a PROXY header (which a proxy sends before the handshake), before HTTP.
            let secure = tls != nil
            if let tls { try channel.pipeline.syncOperations.addHandler(tls.handler()) }
            // Bounds every HTTP request; it leaves when a WebSocket upgrade is accepted.
            let requestLimits = HTTPRequestLimits(limits: limits, addressing: addressing)
            let limitsOnLoop = NIOLoopBound(requestLimits, eventLoop: channel.eventLoop)
            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: configuration.maxMessageBytes,
                shouldUpgrade: { channel, head in
                    let clientAddress = addressing.clientAddress(on: channel, headers: head.headers)
                    let promise = channel.eventLoop.makePromise(of: UpgradeGate.Decision.self)
                    promise.completeWithTask {
                        guard let request = try? HTTPRequest(head, secure: secure, splitCookie: false) else {
                            return .refuse(UpgradeRefusal(status: .badRequest, body: #"{"detail":"Malformed upgrade request"}"#))
                        }
                        return await gate.decide(Request(head: request, body: .init(buffer: .init())), clientAddress, logger)
                    }
                    return promise.futureResult.hop(to: channel.eventLoop).map { decision -> HTTPHeaders? in
                        switch decision {
                        case .accept(let handler):
                            accepted.value = handler
                            return HTTPHeaders()
                        case .refuse(let error):
                            refusal.value = error
                            return nil
                        }
                    }
                },
                upgradePipelineHandler: { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        guard let makeEndpoint = accepted.value else { throw ChannelError.inputClosed }
                        _ = channel.pipeline.syncOperations.removeHandler(limitsOnLoop.value)
                        let connection = WebSocketConnection(configuration: configuration, endpoint: makeEndpoint())
                        try channel.pipeline.syncOperations.addHandler(connection)
                        return UpgradeResult.websocket(channel, NIOLoopBound(connection, eventLoop: channel.eventLoop))
                    }
                }
            )
            let serverUpgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(ClientDeparture())
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: secure))
                        try channel.pipeline.syncOperations.addHandler(
                            // Answers a graceful shutdown's quiesce; the timeouts are `HTTPRequestLimits`'.
                            HTTPConnectionStateHandler(idleTimeout: nil, logger: logger)
                        )
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        if let error = refusal.value {
                            return UpgradeResult.refused(asyncChannel, error)
                        }
                        return UpgradeResult.notUpgraded(asyncChannel)
                    }
                }
            )
            try channel.pipeline.syncOperations.addHandler(QuiesceBeforeFirstRequest())
            var upgradeConfiguration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(upgradeConfiguration: serverUpgradeConfiguration)
            upgradeConfiguration.enablePipelining = false
            // `HTTPRequestLimits` answers malformed and oversized requests.
            upgradeConfiguration.enableErrorHandling = false
            upgradeConfiguration.enableResponseHeaderValidation = false
            upgradeConfiguration.decoderConfiguration = limits.decoder
            let negotiation = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: upgradeConfiguration)
            try channel.pipeline.syncOperations.addHandler(requestLimits)
            return Value(upgradeResult: negotiation, channel: channel)
        }
    }

    public func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            case .refused(let http1, let error):
                await writeRefusal(error, to: http1, logger: logger)
            case .websocket(let channel, let connection):
                // No task waits on the socket (a waiting task would hold kilobytes per idle
                // link): `OpenSockets` keeps it, and closes it at a graceful shutdown.
                sockets.add(channel, connection)
            }
        } catch let error as ChannelError where error == .inputClosed {
            logger.trace("Upgrade failed as input was closed")
        } catch {
            logger.debug("Error handling upgrade result", metadata: ["error.type": .string("\(error)")])
        }
    }

    /// Writes the gate's refusal (`{"detail": ...}`) and closes the connection.
    private func writeRefusal(_ error: UpgradeRefusal, to asyncChannel: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, logger: Logger) async {
        let body = ByteBuffer(string: error.body)
        var headers = error.headers
        headers[.contentType] = "application/json; charset=utf-8"
        headers[.contentLength] = String(body.readableBytes)
        headers[.connection] = "close"
        do {
            try await asyncChannel.executeThenClose { _, outbound in
                try await outbound.write(contentsOf: [.head(HTTPResponse(status: error.status, headerFields: headers)), .body(body), .end(nil)])
            }
        } catch {
            logger.trace("Failed to write the upgrade refusal", metadata: ["error.type": "\(error)"])
        }
    }
}

/// The open WebSockets. At a graceful shutdown it closes each (1001) that nothing else closed,
/// and returns once all are gone (each closes at most `closeTimeout` after its close frame).
public final class OpenSockets: Service, Sendable {
    private let open = Mutex<[ObjectIdentifier: (channel: any Channel, connection: NIOLoopBound<WebSocketConnection>)]>([:])

    public init() {}

    func add(_ channel: any Channel, _ connection: NIOLoopBound<WebSocketConnection>) {
        let key = ObjectIdentifier(channel as AnyObject)
        open.withLock { $0[key] = (channel, connection) }
        channel.closeFuture.whenComplete { [self] _ in _ = open.withLock { $0.removeValue(forKey: key) } }
    }

    public func run() async throws {
        try? await gracefulShutdown()
        let sockets = open.withLock { Array($0.values) }
        for socket in sockets {
            socket.channel.eventLoop.execute { socket.connection.value.close(.goingAway, reason: "Server shutting down") }
        }
        for socket in sockets { try? await socket.channel.closeFuture.get() }
    }
}
