/// Closes, at a graceful shutdown, a connection that has not sent a byte yet (nothing else would).
import NIOCore

/// At a graceful shutdown the server asks every connection to quiesce and waits for all of them
/// to close. Once a request has come, Hummingbird's HTTP handlers (or the relay's WebSockets)
/// answer that; before the first byte, nothing on the pipeline does, so a client that connected
/// and never sent anything (a load balancer's pre-connect, a stalled client) would hold the
/// shutdown forever. This handler closes such a connection when asked to quiesce.
final class QuiesceBeforeFirstRequest: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = NIOAny
    typealias OutboundIn = NIOAny

    private var quiet = true

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        context.fireChannelRead(data)
        if quiet {
            quiet = false
            // From here on the request's own handlers answer a quiesce.
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if quiet, event is ChannelShouldQuiesceEvent {
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }
}
