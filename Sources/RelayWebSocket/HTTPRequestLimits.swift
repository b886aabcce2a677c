/// Bounds on an HTTP connection before the router sees it: bad requests answered, slow ones timed out.
import NIOCore
import NIOHTTP1

/// The limits every HTTP connection lives under (the size limits are the decoder's).
public struct HTTPLimits: Sendable {
    /// The request line and headers together, in bytes (larger: 431 and a close).
    public var maxHeadBytes: Int
    /// How long a request (its head from the moment the connection opened, its body from its
    /// head) may take to arrive (longer: 408 and a close).
    public var requestTimeout: Duration
    /// How long a kept-alive connection may sit between a response and the next request.
    public var idleTimeout: Duration

    public init(maxHeadBytes: Int = 16 * 1024, requestTimeout: Duration = .seconds(10), idleTimeout: Duration = .seconds(30)) {
        self.maxHeadBytes = maxHeadBytes
        self.requestTimeout = requestTimeout
        self.idleTimeout = idleTimeout
    }

    var decoder: NIOHTTPDecoderLimitConfiguration {
        var decoder = NIOHTTPDecoderLimitConfiguration()
        decoder.maxHeaderListSize = maxHeadBytes
        decoder.maxHeaderFieldSize = maxHeadBytes
        decoder.maxHeaderFieldCount = 100
        return decoder
    }
}

/// Part of the HTTP pipeline `FirstRequest` installs for a connection that is not a WebSocket,
/// right after the HTTP decoder. A request the decoder cannot parse gets `400` (`431` when
/// its head is too large) with a JSON detail, and the connection closes; a connection whose
/// first request has not fully arrived `requestTimeout` after it opened, or whose request body
/// has not `requestTimeout` after its head, gets `408` and closes; one idle `idleTimeout` after
/// its last response closes. While a response is being produced (a long poll, an event stream)
/// no timer runs. Every request head gets the edge's `Relay-Client-Address`.
final class HTTPRequestLimits: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let limits: HTTPLimits
    private let addressing: ClientAddressing
    /// Requests whose head came and whose response has not ended.
    private var requestsInFlight = 0
    private var readingBody = false
    private var responding = false
    private var servedOne = false
    private var timer: Scheduled<Void>?

    init(limits: HTTPLimits, addressing: ClientAddressing) {
        self.limits = limits
        self.addressing = addressing
    }

    func handlerAdded(context: ChannelHandlerContext) {
        arm(context, in: limits.requestTimeout)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            requestsInFlight += 1
            readingBody = true
            arm(context, in: limits.requestTimeout)
            // The routes learn who the client is from the edge, never from the client.
            return context.fireChannelRead(wrapInboundOut(.head(addressing.stamped(head, on: context.channel))))
        case .body:
            break
        case .end:
            readingBody = false
            disarm()
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code < 200:
            break
        case .head:
            responding = true
        case .body:
            break
        case .end:
            responding = false
            servedOne = true
            requestsInFlight = max(0, requestsInFlight - 1)
            if readingBody {
                // Answered before its body ended (a 413, say): the rest is not worth reading.
                disarm()
                let channel = context.channel
                let written = promise ?? context.eventLoop.makePromise()
                written.futureResult.whenComplete { _ in channel.close(promise: nil) }
                context.write(data, promise: written)
                return
            }
            if requestsInFlight == 0 { arm(context, in: limits.idleTimeout) }
        }
        context.write(data, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        guard let error = error as? HTTPParserError else { return context.fireErrorCaught(error) }
        if error == .headerOverflow {
            refuse(context, .requestHeaderFieldsTooLarge, "The request line and headers may be at most \(limits.maxHeadBytes) bytes")
        } else {
            refuse(context, .badRequest, "Malformed HTTP request")
        }
    }

    private func arm(_ context: ChannelHandlerContext, in delay: Duration) {
        timer?.cancel()
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(in: .init(delay)) {
            let (handler, context) = loopBound.value
            handler.timedOut(context)
        }
    }

    private func disarm() {
        timer?.cancel()
        timer = nil
    }

    private func timedOut(_ context: ChannelHandlerContext) {
        timer = nil
        if readingBody || !servedOne {
            refuse(context, .requestTimeout, "The request did not arrive within \(limits.requestTimeout.components.seconds) s")
        } else {
            // Idle after a response: nothing is owed, the connection just ends.
            context.close(promise: nil)
        }
    }

    /// Answers with `status` and `{"detail": ...}` (unless a response is already under way) and closes.
    private func refuse(_ context: ChannelHandlerContext, _ status: HTTPResponseStatus, _ detail: String) {
        disarm()
        guard !responding else {
            context.close(promise: nil)
            return
        }
        responding = true
        let body = context.channel.allocator.buffer(string: #"{"detail":"\#(detail)"}"#)
        let headers = HTTPHeaders([
            ("Content-Type", "application/json; charset=utf-8"), ("Content-Length", String(body.readableBytes)), ("Connection", "close"),
        ])
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
