/// Tells a waiting HTTP response that its client has gone (reset, closed, or ended its side).
import NIOCore

/// Tells a waiting HTTP response (an event stream, a long poll) that its client is gone: the
/// connection was reset or closed, or the client ended its side (a FIN). The server allows
/// half-closed connections, so without this a client that closes its event stream would be
/// noticed only at the next keepalive write (contract §4: a transport's end is noticed at once).
public final class ClientDeparture: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = NIOAny

    private var departed: EventLoopPromise<Void>?
    /// Completes when the client is gone; never fails.
    public private(set) var future: EventLoopFuture<Void>!

    public func handlerAdded(context: ChannelHandlerContext) {
        let promise = context.eventLoop.makePromise(of: Void.self)
        departed = promise
        future = promise.futureResult
    }

    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent { departed?.succeed() }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        departed?.succeed()
        context.fireChannelInactive()
    }

    /// The departure future of `channel`'s HTTP connection (nil when it has none: a test's
    /// in-process router).
    public static func future(of channel: any Channel) async -> EventLoopFuture<Void>? {
        let future = try? await channel.eventLoop.submit { () -> EventLoopFuture<Void>? in
            if let handler = try? channel.pipeline.syncOperations.handler(type: ClientDeparture.self) { return handler.future }
            // Already gone: a closed channel has no handlers left.
            return channel.isActive ? nil : channel.eventLoop.makeSucceededVoidFuture()
        }.get()
        return future ?? nil
    }
}
