/// RFC 6455 on a channel: messages, limits, UTF-8, pings and the heartbeat, the close handshake.
import NIOCore
import NIOWebSocket
import RelayCore

/// What runs on an accepted WebSocket. Every call comes on the socket's event loop.
public protocol WebSocketEndpoint: AnyObject {
    /// The socket is open; `connection` writes on it.
    func opened(_ connection: WebSocketConnection)
    /// A whole text message (valid UTF-8, within the size limit).
    func received(text: String)
    /// A whole binary message.
    func receivedBinary(_ data: ByteBuffer)
    /// The socket can take writes again after it could not.
    func writable()
    /// The socket is gone.
    func closed()
}

/// RFC 6455 on top of NIO's frame decoder and encoder, as a channel handler: messages are
/// assembled from fragments within `maxMessageBytes` (else 1009), text is checked as UTF-8
/// (else 1007), protocol errors (an unmasked frame among them) close with 1002; pings are answered
/// in order, but while the socket cannot take writes only the latest is owed (RFC 6455 §5.5.3
/// allows answering just the most recent), and they are limited to `pingsPerSecond` (else 1008); a ping
/// goes out every `heartbeat` and a socket that has missed two pongs in a row is closed (1001
/// "Ping timeout", contract §4): only a pong echoing one of those pings counts, so a client that
/// does not read cannot stay open by sending pongs of its own; the close handshake is answered
/// or, when this side closes, awaited for at most `closeTimeout`. A message is handed to the
/// endpoint where it is read, on the event loop, so relaying one costs no hop between threads.
public final class WebSocketConnection: ChannelInboundHandler {
    public typealias InboundIn = WebSocketFrame
    public typealias OutboundOut = WebSocketFrame

    public struct Configuration: Sendable {
        public var maxMessageBytes: Int
        /// How often to ping; nil: never.
        public var heartbeat: Duration?
        public var closeTimeout: Duration
        /// The peer's pings: at most `burst` at once and `perSecond` on average (else 1008).
        public var pingBurst: Int
        public var pingsPerSecond: Int

        public init(
            maxMessageBytes: Int,
            heartbeat: Duration?,
            closeTimeout: Duration = .seconds(10),
            pingBurst: Int = 50,
            pingsPerSecond: Int = 10
        ) {
            self.maxMessageBytes = maxMessageBytes
            self.heartbeat = heartbeat
            self.closeTimeout = closeTimeout
            self.pingBurst = pingBurst
            self.pingsPerSecond = pingsPerSecond
        }
    }

    private enum State {
        case open
        /// This side sent its close frame and waits for the peer's.
        case closing
        case closed
    }

    private let configuration: Configuration
    private let endpoint: any WebSocketEndpoint
    private var state = State.open
    private var context: ChannelHandlerContext?
    private var fragments: ByteBuffer?
    private var fragmentsAreText = false
    /// The payloads of this side's pings not yet answered (oldest first), and how many pings in
    /// a row went unanswered.
    private var unansweredPings: [UInt64] = []
    private var missedPongs = 0
    /// The pong owed for the peer's latest ping while the socket could not take it: one at
    /// most, whatever the peer sends.
    private var owedPong: ByteBuffer?
    /// The peer's ping budget.
    private var pings: TokenBucket<ContinuousClock.Instant>
    private var heartbeat: RepeatedTask?
    private var closeTimer: Scheduled<Void>?

    public init(configuration: Configuration, endpoint: any WebSocketEndpoint) {
        self.configuration = configuration
        self.endpoint = endpoint
        self.pings = TokenBucket(burst: configuration.pingBurst, perSecond: Double(configuration.pingsPerSecond))
    }

    /// The socket's channel (set when the handler is added, kept after it is removed).
    public private(set) var channel: (any Channel)!
    public var isWritable: Bool { context?.channel.isWritable ?? false }
    public var isOpen: Bool { state == .open }

    public func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        self.channel = context.channel
        if let period = configuration.heartbeat {
            let loopBound = NIOLoopBound(self, eventLoop: context.eventLoop)
            heartbeat = context.eventLoop.scheduleRepeatedTask(initialDelay: .init(period), delay: .init(period)) { _ in
                loopBound.value.beat()
            }
        }
        endpoint.opened(self)
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
    }

    public func channelInactive(context: ChannelHandlerContext) {
        state = .closed
        heartbeat?.cancel()
        closeTimer?.cancel()
        endpoint.closed()
        context.fireChannelInactive()
    }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable {
            payOwedPong(context: context)
            endpoint.writable()
        }
        context.fireChannelWritabilityChanged()
    }

    /// Writes the pong owed for the peer's latest ping, unless the socket cannot take it now
    /// (then it waits, alone, for the socket to drain; a peer that never reads is closed by the
    /// heartbeat).
    private func payOwedPong(context: ChannelHandlerContext) {
        guard let data = owedPong, state == .open, context.channel.isWritable else { return }
        owedPong = nil
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: data)), promise: nil)
    }

    public func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }

    /// The peer ended its side of the TCP connection (a FIN without a close frame: a client
    /// that dropped its socket). The server allows half-closed connections for HTTP; a
    /// WebSocket that can no longer be read is over, so it closes now rather than at the next
    /// missed ping.
    public func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .some(.inputClosed) = event as? ChannelEvent {
            state = .closed
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard state != .closed else { return }
        guard frame.reservedBits.isEmpty else { return fail(.protocolError) }
        // RFC 6455 §5.1: a client masks every frame; the server closes on one that is not.
        guard frame.maskKey != nil else { return fail(.protocolError) }
        switch frame.opcode {
        case .text, .binary:
            guard fragments == nil else { return fail(.protocolError) }
            guard state == .open else { return }
            let data = frame.unmaskedData
            guard data.readableBytes <= configuration.maxMessageBytes else { return fail(.messageTooLarge) }
            if frame.fin {
                deliver(data, text: frame.opcode == .text)
            } else {
                fragments = data
                fragmentsAreText = frame.opcode == .text
            }
        case .continuation:
            guard var buffer = fragments else { return fail(.protocolError) }
            fragments = nil
            var data = frame.unmaskedData
            guard buffer.readableBytes + data.readableBytes <= configuration.maxMessageBytes else { return fail(.messageTooLarge) }
            buffer.writeBuffer(&data)
            if frame.fin {
                if state == .open { deliver(buffer, text: fragmentsAreText) }
            } else {
                fragments = buffer
            }
        case .ping:
            let data = frame.unmaskedData
            guard frame.fin, data.readableBytes <= 125 else { return fail(.protocolError) }
            guard state == .open else { return }
            guard pings.take(now: .now) else { return fail(.policyViolation) }
            owedPong = data
            payOwedPong(context: context)
        case .pong:
            var data = frame.unmaskedData
            guard frame.fin, data.readableBytes <= 125 else { return fail(.protocolError) }
            // A pong echoing one of this side's pings (a late one too) shows the peer is there
            // and reading; an unsolicited pong shows neither.
            if data.readableBytes == 8, let payload = data.readInteger(as: UInt64.self), unansweredPings.contains(payload) {
                unansweredPings.removeAll()
                missedPongs = 0
            }
        case .connectionClose:
            guard frame.fin else { return fail(.protocolError) }
            receivedClose(frame.unmaskedData)
        default:
            fail(.protocolError)
        }
    }

    private func deliver(_ data: ByteBuffer, text: Bool) {
        guard text else { return endpoint.receivedBinary(data) }
        guard let string = String(validating: data.readableBytesView, as: UTF8.self) else { return fail(.dataInconsistentWithMessage) }
        endpoint.received(text: string)
    }

    /// The peer's close: answered with its code when valid (else 1002), then the socket closes.
    private func receivedClose(_ data: ByteBuffer) {
        guard state == .open else {
            // The answer to this side's close: the handshake is over.
            state = .closed
            context?.close(promise: nil)
            return
        }
        var data = data
        let code: WebSocketErrorCode
        switch data.readableBytes {
        case 0:
            code = .normalClosure
        case 1:
            code = .protocolError
        default:
            let number = data.readInteger(as: UInt16.self)!
            let reasonIsText = String(validating: data.readableBytesView, as: UTF8.self) != nil
            if !reasonIsText {
                code = .protocolError
            } else if case .unknown(let unknown) = WebSocketErrorCode(codeNumber: Int(number)), unknown < 3000 || unknown > 4999 {
                code = .protocolError
            } else {
                code = .normalClosure
            }
        }
        // The peer sends nothing after its close frame: nothing unread can turn this into a reset.
        closeNow(code, reason: nil, lingering: false)
    }

    /// A protocol error: close with `code` without waiting for the peer.
    private func fail(_ code: WebSocketErrorCode) {
        fragments = nil
        owedPong = nil
        closeNow(code, reason: nil)
    }

    /// Sends the close frame and ends this side. With `lingering` (the peer is alive but broke
    /// the protocol) the connection is half-closed rather than closed, and what the peer still
    /// sends is read and dropped until it closes too (or for `lingerAfterFailure`): closing with
    /// unread bytes would send a reset, which makes the peer's system discard what it has not
    /// read yet, this close frame with it. Without (a peer presumed gone), it closes once the
    /// frame is written.
    private func closeNow(_ code: WebSocketErrorCode, reason: String?, lingering: Bool = true) {
        guard let context, state != .closed else { return }
        state = .closed
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(closeFrame(code, reason: reason))).whenComplete { _ in
            channel.close(mode: lingering ? .output : .all, promise: nil)
        }
        closeTimer = context.eventLoop.scheduleTask(in: .init(Self.lingerAfterFailure)) { channel.close(promise: nil) }
    }

    static let lingerAfterFailure = Duration.seconds(2)

    private func closeFrame(_ code: WebSocketErrorCode, reason: String?) -> WebSocketFrame {
        var buffer = context!.channel.allocator.buffer(capacity: 2 + (reason?.utf8.count ?? 0))
        buffer.write(webSocketErrorCode: code)
        if let reason { buffer.writeString(reason) }
        return WebSocketFrame(fin: true, opcode: .connectionClose, data: buffer)
    }

    /// Every heartbeat: close a socket that has left two pings in a row unanswered, else ping.
    private func beat() {
        guard state == .open, let context else { return }
        if !unansweredPings.isEmpty {
            missedPongs += 1
            if missedPongs >= Self.missedPongsBeforeClosing {
                closeNow(.goingAway, reason: "Ping timeout", lingering: false)
                return
            }
        }
        let number = UInt64.random(in: .min ... .max)
        var payload = context.channel.allocator.buffer(capacity: 8)
        payload.writeInteger(number)
        unansweredPings.append(number)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .ping, data: payload)), promise: nil)
    }

    static let missedPongsBeforeClosing = 2

    // MARK: Writing (on the event loop)

    /// Queues a text message; it goes out at the next `flush`.
    public func write(text: String) {
        guard state == .open, let context else { return }
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .text, data: context.channel.allocator.buffer(string: text))), promise: nil)
    }

    /// Queues a binary message; it goes out at the next `flush`.
    public func write(binary: ByteBuffer) {
        guard state == .open, let context else { return }
        context.write(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .binary, data: binary)), promise: nil)
    }

    public func flush() { context?.flush() }

    /// Starts the close handshake: what is queued goes out, then the close frame; the socket
    /// closes when the peer answers, or after `closeTimeout`.
    public func close(_ code: WebSocketErrorCode, reason: String?) {
        guard state == .open, let context else { return }
        state = .closing
        context.writeAndFlush(wrapOutboundOut(closeFrame(code, reason: reason)), promise: nil)
        let channel = context.channel
        closeTimer = context.eventLoop.scheduleTask(in: .init(configuration.closeTimeout)) { channel.close(promise: nil) }
    }

    /// Stops or resumes reading from the socket.
    public func setReading(_ on: Bool) {
        _ = context?.channel.setOption(ChannelOptions.autoRead, value: on)
    }
}
