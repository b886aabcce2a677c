/// The server's connections: HTTP/1.1 to the router, WebSocket upgrades through a gate, and the open sockets.

// First adapted from hummingbird-websocket's HTTP1WebSocketUpgradeChannel (Apache-2.0,
// Copyright (c) the Hummingbird authors); the upgrade is now the relay's own (`FirstRequest`):
// the refusal's own status and `{"detail": ...}`, and no HTTP handlers added and removed for a
// WebSocket.

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

/// A server child channel: the first request decides (`FirstRequest`): a WebSocket upgrade goes
/// through the `UpgradeGate` (a refusal is written with its status and JSON body), anything else
/// gets the HTTP/1.1 pipeline and the router.
public struct WebSocketServerChannel: ServerChildChannel, HTTPChannelHandler {
    public enum UpgradeResult: Sendable {
        /// The socket runs as a `WebSocketConnection` on its event loop until it closes.
        case websocket(any Channel, NIOLoopBound<WebSocketConnection>)
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
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
    /// The first requests' deadlines, a queue per event loop.
    let deadlines = RequestDeadlines.Book()
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
            // Over its address's cap: answered 429 and closed, nothing served. (Failing the setup
            // instead would reach the server's accept loop as an error.)
            do {
                if let tls { try channel.pipeline.syncOperations.addHandler(tls.handler()) }
                try channel.pipeline.syncOperations.addHandlers(OverCapRefusal.handlers(limit: connections.limit))
            } catch {
                channel.close(promise: nil)
            }
            return channel.eventLoop.makeSucceededFuture(Value(upgradeResult: channel.eventLoop.makeFailedFuture(ChannelError.inputClosed), channel: channel))
        }
        return channel.eventLoop.makeCompletedFuture {
            try channel.syncOptions?.setOption(
                ChannelOptions.recvAllocator,
                value: AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536)
            )
            var requestLogger = logger
            requestLogger[metadataKey: "hb.request.id"] = .stringConvertible(RequestID())
            let logger = requestLogger
            if let peer = channel.remoteAddress?.ipAddress, addressing.isTrusted(peer) {
                // A proxy may say who its client is in a PROXY protocol header first.
                try channel.pipeline.syncOperations.addHandler(ProxyHeaderReader())
            }
            // TLS after a PROXY header (which a proxy sends before the handshake), before HTTP.
            let secure = tls != nil
            if let tls { try channel.pipeline.syncOperations.addHandler(tls.handler()) }
            let limits = limits
            let addressing = addressing
            let result = channel.eventLoop.makePromise(of: UpgradeResult.self)
            let first = FirstRequest(
                FirstRequest.Setup(
                    limits: limits,
                    addressing: addressing,
                    gate: gate,
                    webSocket: webSocket,
                    secure: secure,
                    logger: logger,
                    installHTTP: { channel in
                        let pipeline = channel.pipeline.syncOperations
                        let encoder = HTTPResponseEncoder()
                        let decoder = ByteToMessageHandler(
                            HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, informationalResponseStrategy: .drop, limitConfiguration: limits.decoder)
                        )
                        try pipeline.addHandlers(
                            [
                                encoder, decoder, HTTPRequestLimits(limits: limits, addressing: addressing), ClientDeparture(),
                                HTTP1ToHTTPServerCodec(secure: secure),
                                // Answers a graceful shutdown's quiesce; the timeouts are `HTTPRequestLimits`'.
                                HTTPConnectionStateHandler(idleTimeout: nil, logger: logger),
                            ]
                        )
                        let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        return .notUpgraded(asyncChannel)
                    }
                ),
                deadlines: deadlines.deadlines(on: channel.eventLoop),
                result: result
            )
            try channel.pipeline.syncOperations.addHandler(first)
            return Value(upgradeResult: result.futureResult, channel: channel)
        }
    }

    public func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            case .websocket(let channel, let connection):
                // No task waits on the socket (a waiting task would hold kilobytes per idle
                // link): `OpenSockets` keeps it, and closes it at a graceful shutdown.
                sockets.add(channel, connection)
            }
        } catch let error as ChannelError where error == .inputClosed {
            logger.trace("Connection closed before its first request was decided")
        } catch {
            logger.debug("Error handling the first request", metadata: ["error.type": .string("\(error)")])
        }
    }
}

/// The open WebSockets. At a graceful shutdown it closes each (1001) that nothing else closed,
/// and returns once all are gone: a socket whose client has not answered its close frame within
/// `cut` (one that never reads, say) is closed there and then, so no client holds the process up.
public final class OpenSockets: Service, Sendable {
    private let open = Mutex<[ObjectIdentifier: (channel: any Channel, connection: NIOLoopBound<WebSocketConnection>)]>([:])
    private let cut: Duration

    public init(cut: Duration = .milliseconds(300)) {
        self.cut = cut
    }

    func add(_ channel: any Channel, _ connection: NIOLoopBound<WebSocketConnection>) {
        let key = ObjectIdentifier(channel as AnyObject)
        open.withLock { $0[key] = (channel, connection) }
        channel.closeFuture.whenComplete { [self] _ in _ = open.withLock { $0.removeValue(forKey: key) } }
    }

    public func run() async throws {
        try? await gracefulShutdown()
        let sockets = open.withLock { Array($0.values) }
        let cut = TimeAmount(cut)
        for socket in sockets {
            let channel = socket.channel
            channel.eventLoop.execute {
                socket.connection.value.close(.goingAway, reason: "Server shutting down")
                channel.eventLoop.scheduleTask(in: cut) { channel.close(promise: nil) }
            }
        }
        for socket in sockets { try? await socket.channel.closeFuture.get() }
    }
}
