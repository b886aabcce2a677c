// Adapted from hummingbird-websocket's HTTP1WebSocketUpgradeChannel (Apache-2.0, Copyright (c)
// the Hummingbird authors). That channel answers every refused upgrade with a fixed status and
// no body; the relay's contract needs the refusal's own status and `{"detail": ...}` so a robot
// developer can tell an expired token from a stale clock. This channel keeps the refusal the
// gate produced and writes it.

import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket
import Synchronization
@_spi(WSInternal) import WSCore

/// Decides whether a WebSocket upgrade request may proceed, before the upgrade.
struct UpgradeGate: Sendable {
    enum Decision: Sendable {
        /// Upgrade and run this handler on the socket.
        case accept(WebSocketDataHandler<SocketContext>)
        /// Answer with this error instead of upgrading.
        case refuse(RelayHTTPError)
    }

    /// Decides for a request from a client at an IP address (nil when unknown).
    let decide: @Sendable (Request, String?, Logger) async -> Decision
}

/// The context a relay WebSocket handler runs with.
struct SocketContext: WebSocketContext {
    let logger: Logger
    /// The WebSocket's channel, for writing text frames straight from its event loop.
    let channel: any Channel
    /// Tells who writes on the channel when it can take writes again.
    let writability: WritabilitySignal

    /// Closes the connection at once, without a close handshake (a reader too slow to take one).
    var drop: @Sendable () -> Void { { [channel] in channel.close(promise: nil) } }
}

/// Calls `onWritable` on the event loop when the channel becomes writable again after its
/// buffered writes passed the high-water mark.
final class WritabilitySignal: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame

    private let onWritable = Mutex<(@Sendable () -> Void)?>(nil)

    func notify(_ callback: @escaping @Sendable () -> Void) {
        onWritable.withLock { $0 = callback }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let callback = onWritable.withLock({ $0 }) { callback() }
        context.fireChannelWritabilityChanged()
    }
}

/// A server child channel: HTTP/1.1 requests go to the router; WebSocket upgrade requests go
/// through the `UpgradeGate`, and a refusal is written with its status and JSON body.
struct RelayServerChannel: ServerChildChannel, HTTPChannelHandler {
    typealias SocketHandler = @Sendable (NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, Logger) async -> Void

    enum UpgradeResult: Sendable {
        case websocket(NIOAsyncChannel<WebSocketFrame, WebSocketFrame>, SocketHandler, Logger)
        case notUpgraded(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        case refused(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, RelayHTTPError)
    }

    struct Value: ServerChildChannelValue {
        let upgradeResult: EventLoopFuture<UpgradeResult>
        let channel: any Channel
    }

    let responder: HTTPChannelHandler.Responder
    let gate: UpgradeGate
    let webSocket: WebSocketServerConfiguration
    let idleTimeout: Duration?

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.eventLoop.makeCompletedFuture {
            // Both boxes are written and read on the channel's event loop: the gate's decision is
            // carried from `shouldUpgrade` to the upgrade (or to the refusal) without deciding twice,
            // which would spend a device's nonce twice.
            let accepted = NIOLoopBoundBox<WebSocketDataHandler<SocketContext>?>(nil, eventLoop: channel.eventLoop)
            let refusal = NIOLoopBoundBox<RelayHTTPError?>(nil, eventLoop: channel.eventLoop)
            var logger = logger
            logger[metadataKey: "hb.request.id"] = .stringConvertible(RequestID())
            let configuration = webSocket
            let gate = gate
            let upgrader = NIOTypedWebSocketServerUpgrader<UpgradeResult>(
                maxFrameSize: configuration.maxFrameSize,
                shouldUpgrade: { channel, head in
                    let promise = channel.eventLoop.makePromise(of: UpgradeGate.Decision.self)
                    promise.completeWithTask {
                        guard let request = try? HTTPRequest(head, secure: false, splitCookie: false) else {
                            return .refuse(RelayHTTPError(.badRequest, "Malformed upgrade request"))
                        }
                        return await gate.decide(Request(head: request, body: .init(buffer: .init())), channel.remoteAddress?.ipAddress, logger)
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
                        let writability = WritabilitySignal()
                        try channel.pipeline.syncOperations.addHandler(writability)
                        let asyncChannel = try NIOAsyncChannel<WebSocketFrame, WebSocketFrame>(
                            wrappingChannelSynchronously: channel,
                            configuration: .init(isOutboundHalfClosureEnabled: true)
                        )
                        let dataHandler = accepted.value
                        let handler: SocketHandler = { asyncChannel, logger in
                            guard let dataHandler else { return }
                            do {
                                _ = try await WebSocketHandler.handle(
                                    type: .server,
                                    configuration: .init(
                                        extensions: [],
                                        autoPing: configuration.autoPing,
                                        closeTimeout: configuration.closeTimeout,
                                        validateUTF8: configuration.validateUTF8,
                                        maxFrameSize: configuration.maxFrameSize
                                    ),
                                    asyncChannel: asyncChannel,
                                    context: SocketContext(logger: logger, channel: asyncChannel.channel, writability: writability),
                                    handler: dataHandler
                                )
                            } catch {
                                logger.debug("WebSocket handler error", metadata: ["error.type": "\(error)"])
                            }
                        }
                        return UpgradeResult.websocket(asyncChannel, handler, logger)
                    }
                }
            )
            let serverUpgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration(
                upgraders: [upgrader],
                notUpgradingCompletionHandler: { channel in
                    channel.eventLoop.makeCompletedFuture {
                        try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                        try channel.pipeline.syncOperations.addHandler(
                            HTTPConnectionStateHandler(idleTimeout: idleTimeout, logger: logger)
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
            var upgradeConfiguration = NIOUpgradableHTTPServerPipelineConfiguration<UpgradeResult>(upgradeConfiguration: serverUpgradeConfiguration)
            upgradeConfiguration.enablePipelining = false
            upgradeConfiguration.enableErrorHandling = false
            upgradeConfiguration.enableResponseHeaderValidation = false
            let negotiation = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: upgradeConfiguration)
            return Value(upgradeResult: negotiation, channel: channel)
        }
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.upgradeResult.get() {
            case .notUpgraded(let http1):
                await handleHTTP(asyncChannel: http1, logger: logger)
            case .refused(let http1, let error):
                await writeRefusal(error, to: http1, logger: logger)
            case .websocket(let asyncChannel, let handler, let logger):
                await handler(asyncChannel, logger)
            }
        } catch let error as ChannelError where error == .inputClosed {
            logger.trace("Upgrade failed as input was closed")
        } catch {
            logger.debug("Error handling upgrade result", metadata: ["error.type": .string("\(error)")])
        }
    }

    /// Writes the gate's refusal (`{"detail": ...}`) and closes the connection.
    private func writeRefusal(_ error: RelayHTTPError, to asyncChannel: NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, logger: Logger) async {
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
