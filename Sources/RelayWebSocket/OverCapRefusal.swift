/// The answer to a connection over its address's cap: 429 with `Retry-After`, then the close.
import NIOCore
import NIOHTTP1

/// The whole pipeline of a connection its address may not open (`ConnectionsPerAddress`): it
/// reads the first request's head, answers `429 Too Many Requests` with `Retry-After` and a JSON
/// `detail`, and closes. Nothing of the request reaches the router or the upgrade gate; a client
/// that sends no request within `deadline` is closed unanswered.
final class OverCapRefusal: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// The seconds a client is told to wait: another connection of its address has to end first.
    static let retryAfterSeconds = 5

    private let limit: Int
    private let deadline: TimeAmount
    private var timer: Scheduled<Void>?
    private var answered = false

    init(limit: Int, deadline: TimeAmount = .seconds(2)) {
        self.limit = limit
        self.deadline = deadline
    }

    /// The handlers a refused connection gets, after TLS when the server has it.
    static func handlers(limit: Int) -> [any ChannelHandler] {
        [
            HTTPResponseEncoder(),
            ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes)),
            OverCapRefusal(limit: limit),
        ]
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let channel = context.channel
        timer = context.eventLoop.scheduleTask(in: deadline) { channel.close(promise: nil) }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard case .head = unwrapInboundIn(data), !answered else { return }
        answered = true
        timer?.cancel()
        let detail = "This address holds \(limit) open connections, the most one address may; retry once one of them ends"
        let body = context.channel.allocator.buffer(string: #"{"detail":"\#(detail)"}"#)
        let headers = HTTPHeaders([
            ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", String(body.readableBytes)),
            ("Retry-After", String(Self.retryAfterSeconds)), ("Connection", "close"),
        ])
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: .tooManyRequests, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Not HTTP, or not TLS: nothing to answer.
        context.close(promise: nil)
    }
}
