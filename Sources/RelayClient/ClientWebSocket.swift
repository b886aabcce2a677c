/// The client side of one WebSocket (RFC 6455) on SwiftNIO: the upgrade, and when it is refused
/// the HTTP answer (status, `Retry-After`, the relay's `detail`), which a client needs to know
/// whether trying again can help.
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOSSL
import NIOWebSocket
import RelayCore

/// An upgrade the server answered with something other than 101.
struct UpgradeRefusal: Sendable, Error {
    var status: Int
    /// `Retry-After` in seconds, when the answer had one.
    var retryAfter: Int?
    /// The body's `detail` (the relay's problem documents), or the body itself.
    var detail: String
}

/// A WebSocket endpoint: `ws://` or `wss://` (`http`/`https` accepted as their equivalents).
struct EndpointURL: Sendable, Equatable {
    var secure: Bool
    var host: String
    var port: Int
    /// Path and query, as sent in the request line.
    var target: String

    init?(_ text: String) {
        let schemes: [(String, Bool)] = [("ws://", false), ("http://", false), ("wss://", true), ("https://", true)]
        guard let (scheme, secure) = schemes.first(where: { text.lowercased().hasPrefix($0.0) }) else { return nil }
        let rest = text.dropFirst(scheme.count)
        let authority = rest.prefix { $0 != "/" && $0 != "?" }
        var target = String(rest.dropFirst(authority.count))
        if target.isEmpty || target.first == "?" { target = "/" + target }
        var host = String(authority)
        var port = secure ? 443 : 80
        if host.hasPrefix("[") {  // [v6]:port
            guard let close = host.firstIndex(of: "]") else { return nil }
            let after = host[host.index(after: close)...]
            if after.hasPrefix(":") {
                guard let number = Int(after.dropFirst()) else { return nil }
                port = number
            }
            host = String(host[host.index(after: host.startIndex)..<close])
        } else if let colon = host.lastIndex(of: ":") {
            guard let number = Int(host[host.index(after: colon)...]) else { return nil }
            port = number
            host = String(host[..<colon])
        }
        guard !host.isEmpty, (1...65535).contains(port) else { return nil }
        self.secure = secure
        self.host = host
        self.port = port
        self.target = target
    }

    /// The `Host` header: the port only when it is not the scheme's default.
    var hostHeader: String {
        let name = host.contains(":") ? "[\(host)]" : host
        return port == (secure ? 443 : 80) ? name : "\(name):\(port)"
    }

    /// This endpoint with `query` added to its target.
    func adding(query: String) -> EndpointURL {
        guard !query.isEmpty else { return self }
        var copy = self
        copy.target += (target.contains("?") ? "&" : "?") + query
        return copy
    }
}

/// One open WebSocket: text frames out (masked), text frames in as an `AsyncStream`, pings
/// answered, and how it ended.
final class ClientWebSocket: Sendable {
    enum Inbound: Sendable {
        case text(String)
        /// The socket ended; `code` is the close frame's status, nil when none came.
        case ended(code: UInt16?, reason: String)
    }

    let inbound: AsyncStream<Inbound>
    private let channel: any Channel

    private init(channel: any Channel, inbound: AsyncStream<Inbound>) {
        self.channel = channel
        self.inbound = inbound
    }

    /// Sends one text frame. Fire and forget: a frame lost with the socket is the caller's to
    /// send again (the relay client keeps what it sends until it is acked).
    func send(_ text: String) {
        let frame = WebSocketFrame(fin: true, opcode: .text, maskKey: .random(), data: ByteBuffer(string: text))
        channel.writeAndFlush(frame, promise: nil)
    }

    /// Starts the closing handshake; the socket ends when the server answers (or at once if it
    /// cannot be written).
    func close(code: WebSocketErrorCode = .normalClosure) {
        var data = ByteBuffer()
        data.write(webSocketErrorCode: code)
        let frame = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: data)
        channel.writeAndFlush(frame).whenFailure { [channel] _ in channel.close(promise: nil) }
    }

    /// Ends the TCP connection without a closing handshake, as a lost network does.
    func abort() {
        channel.close(promise: nil)
    }

    enum Outcome: Sendable {
        case open(ClientWebSocket)
        case refused(UpgradeRefusal)
    }

    /// What the upgrade handler learns at once; a refusal's body comes after it.
    private enum Upgrade: Sendable {
        case open(ClientWebSocket)
        case refused(EventLoopFuture<UpgradeRefusal>)
    }

    /// Connects and upgrades, sending `headers` with the request.
    static func connect(
        to url: EndpointURL,
        headers: [(String, String)],
        tls: TLSConfiguration?,
        timeout: TimeAmount,
        maxMessageSize: Int,
        group: any EventLoopGroup
    ) async throws -> Outcome {
        let sslContext = try url.secure ? NIOSSLContext(configuration: tls ?? .makeClientConfiguration()) : nil
        let upgrade = try await ClientBootstrap(group: group)
            .connectTimeout(timeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .connect(host: url.host, port: url.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try Self.configure(channel: channel, url: url, headers: headers, sslContext: sslContext, maxMessageSize: maxMessageSize)
                }
            }
        switch try await upgrade.get() {
        case .open(let socket): return .open(socket)
        case .refused(let answer): return .refused(try await answer.get())
        }
    }

    private static func configure(
        channel: any Channel,
        url: EndpointURL,
        headers: [(String, String)],
        sslContext: NIOSSLContext?,
        maxMessageSize: Int
    ) throws -> EventLoopFuture<Upgrade> {
        if let sslContext {
            let serverName = url.host.contains(":") || url.host.allSatisfy({ $0.isNumber || $0 == "." }) ? nil : url.host
            try channel.pipeline.syncOperations.addHandler(NIOSSLClientHandler(context: sslContext, serverHostname: serverName))
        }
        var head = HTTPRequestHead(version: .http1_1, method: .GET, uri: url.target)
        head.headers.add(name: "Host", value: url.hostHeader)
        head.headers.add(name: "Content-Length", value: "0")
        for (name, value) in headers { head.headers.add(name: name, value: value) }

        let upgrader = NIOTypedWebSocketClientUpgrader<Upgrade>(maxFrameSize: maxMessageSize) { channel, _ in
            channel.eventLoop.makeCompletedFuture {
                let (stream, continuation) = AsyncStream.makeStream(of: Inbound.self)
                try channel.pipeline.syncOperations.addHandler(
                    NIOWebSocketFrameAggregator(minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: 1024, maxAccumulatedFrameSize: maxMessageSize)
                )
                try channel.pipeline.syncOperations.addHandler(FrameHandler(continuation: continuation))
                return .open(ClientWebSocket(channel: channel, inbound: stream))
            }
        }
        let configuration = NIOTypedHTTPClientUpgradeConfiguration<Upgrade>(
            upgradeRequestHead: head,
            upgraders: [upgrader],
            notUpgradingCompletionHandler: { channel in
                // The answer's head and body come through once this returns: read them, then close.
                channel.eventLoop.makeCompletedFuture {
                    let promise = channel.eventLoop.makePromise(of: UpgradeRefusal.self)
                    try channel.pipeline.syncOperations.addHandler(RefusalReader(promise: promise))
                    return .refused(promise.futureResult)
                }
            }
        )
        var pipeline = NIOUpgradableHTTPClientPipelineConfiguration(upgradeConfiguration: configuration)
        pipeline.leftOverBytesStrategy = .forwardBytes
        return try channel.pipeline.syncOperations.configureUpgradableHTTPClientPipeline(configuration: pipeline)
    }
}

/// After the upgrade: text frames to the stream, pings answered, the close handshake completed.
private final class FrameHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let continuation: AsyncStream<ClientWebSocket.Inbound>.Continuation
    private var closeCode: UInt16?
    private var closeReason = ""
    private var closeSent = false

    init(continuation: AsyncStream<ClientWebSocket.Inbound>.Continuation) {
        self.continuation = continuation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            continuation.yield(.text(String(buffer: frame.unmaskedData)))
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: .random(), data: frame.unmaskedData)
            context.writeAndFlush(wrapOutboundOut(pong), promise: nil)
        case .connectionClose:
            var data = frame.unmaskedData
            if let code = data.readInteger(as: UInt16.self) {
                closeCode = code
                closeReason = data.readString(length: data.readableBytes) ?? ""
            } else {
                closeCode = 1005
            }
            // Echo the close (RFC 6455 §5.5.1), then end the connection.
            let echo = WebSocketFrame(fin: true, opcode: .connectionClose, maskKey: .random(), data: ByteBuffer())
            context.writeAndFlush(wrapOutboundOut(echo)).assumeIsolated().whenComplete { _ in context.close(promise: nil) }
        default:
            break  // binary frames and pongs mean nothing to the relay's protocol
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    func channelInactive(context: ChannelHandlerContext) {
        continuation.yield(.ended(code: closeCode, reason: closeReason))
        continuation.finish()
        context.fireChannelInactive()
    }
}

/// Reads a refused upgrade's answer (status, `Retry-After`, body) and closes the connection.
private final class RefusalReader: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let promise: EventLoopPromise<UpgradeRefusal>
    private var refusal = UpgradeRefusal(status: 0, retryAfter: nil, detail: "")
    private var body = ByteBuffer()
    private var answered = false

    init(promise: EventLoopPromise<UpgradeRefusal>) {
        self.promise = promise
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            refusal.status = Int(head.status.code)
            refusal.retryAfter = head.headers.first(name: "Retry-After").flatMap { Int($0.trimmingSpaces) }
        case .body(var part):
            if body.readableBytes < 16_384 { body.writeBuffer(&part) }
        case .end:
            refusal.detail = Self.detail(of: String(buffer: body))
            answer(.success(refusal))
            context.close(promise: nil)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        answer(.failure(ChannelError.eof))
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        answer(.failure(error))
        context.close(promise: nil)
    }

    private func answer(_ result: Result<UpgradeRefusal, any Error>) {
        guard !answered else { return }
        answered = true
        promise.completeWith(result)
    }

    /// The `detail` of a problem document, or the text itself when it is not one.
    static func detail(of text: String) -> String {
        if let object = try? JSONParser.object(text), let detail = object["detail"]?.stringValue { return detail }
        return text
    }
}

extension String {
    fileprivate var trimmingSpaces: Substring {
        let start = firstIndex { $0 != " " } ?? endIndex
        let end = lastIndex { $0 != " " }.map { index(after: $0) } ?? start
        return self[start..<max(start, end)]
    }
}
