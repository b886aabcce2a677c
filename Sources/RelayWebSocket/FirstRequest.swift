/// A connection's first request, read by hand: a WebSocket upgrade is answered here, anything else gets the HTTP pipeline.
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import NIOHTTP1
import NIOWebSocket
import OpenSSLCrypto

/// The first handler on a connection (after TLS and a PROXY header). It reads the first request
/// head itself. A clean WebSocket upgrade (`GET`, `HTTP/1.1`, `Upgrade: websocket`,
/// `Connection: upgrade`, version 13, a key) goes to the gate and is answered here: `101` and the
/// frame codec with a `WebSocketConnection`, or the gate's refusal and a close. Anything else
/// (plain HTTP, or a request this reader does not find clean) gets the HTTP pipeline, which reads
/// the same bytes again and answers malformed requests itself. Either way this handler then
/// leaves, so a WebSocket never carries HTTP handlers and is set up without adding and removing
/// them. Until the head is complete it bounds its size (431) and time (408), and closes the
/// connection when the server asks it to quiesce.
final class FirstRequest: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    struct Setup {
        let limits: HTTPLimits
        let addressing: ClientAddressing
        let gate: UpgradeGate
        let webSocket: WebSocketConnection.Configuration
        let secure: Bool
        let logger: Logger
        /// Adds the HTTP pipeline after this handler (the pipeline's last); what the server then runs.
        let installHTTP: (any Channel) throws -> WebSocketServerChannel.UpgradeResult
    }

    private enum State {
        case reading
        /// The gate is deciding an upgrade; bytes that come meanwhile wait.
        case deciding
        case done
    }

    private let setup: Setup
    private let result: EventLoopPromise<WebSocketServerChannel.UpgradeResult>
    private var state = State.reading
    private var buffered: ByteBuffer?
    /// How many of `buffered`'s bytes were searched for the end of the head.
    private var scanned = 0
    private let deadlines: RequestDeadlines
    private var context: ChannelHandlerContext?

    init(_ setup: Setup, deadlines: RequestDeadlines, result: EventLoopPromise<WebSocketServerChannel.UpgradeResult>) {
        self.setup = setup
        self.deadlines = deadlines
        self.result = result
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        deadlines.add(self, deadline: .now() + .init(setup.limits.requestTimeout))
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        self.context = nil
        // Closed before anything was decided: nothing runs on this connection.
        resolve(.failure(ChannelError.inputClosed))
    }

    /// The request timeout passed (`RequestDeadlines`): 408 unless the head came meanwhile.
    func requestTimedOut() {
        guard case .reading = state, let context else { return }
        answer(context, .requestTimeout, detail: "The request did not arrive within \(setup.limits.requestTimeout.components.seconds) s")
    }

    private var resolved = false

    private func resolve(_ outcome: Result<WebSocketServerChannel.UpgradeResult, any Error>) {
        guard !resolved else { return }
        resolved = true
        result.completeWith(outcome)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if var earlier = buffered {
            earlier.writeBuffer(&bytes)
            bytes = earlier
        }
        buffered = bytes
        guard case .reading = state else {
            // While the gate decides, a client has no reason to send more than a first message.
            if bytes.readableBytes > setup.limits.maxHeadBytes + setup.webSocket.maxMessageBytes + 14 {
                state = .done
                context.close(promise: nil)
            }
            return
        }
        let view = bytes.readableBytesView
        // Earlier reads were searched already (but for a terminator split across two reads).
        guard let end = Self.endOfHead(view, from: max(0, scanned - 3)) else {
            scanned = view.count
            if view.count > setup.limits.maxHeadBytes {
                answer(context, .requestHeaderFieldsTooLarge, detail: "The request line and headers may be at most \(setup.limits.maxHeadBytes) bytes")
            }
            return
        }
        guard end <= setup.limits.maxHeadBytes, let upgrade = UpgradeHead(view.prefix(end)) else { return installHTTP(context) }
        decide(upgrade, context: context, headLength: end + 4)
    }

    func channelInactive(context: ChannelHandlerContext) {
        state = .done
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        // Before its first request is read nothing else on the connection answers a quiesce.
        if case .reading = state, event is ChannelShouldQuiesceEvent {
            state = .done
            context.close(promise: nil)
            return
        }
        if case .some(.inputClosed) = event as? ChannelEvent, case .reading = state {
            state = .done
            context.close(promise: nil)
            return
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// Where the head ends (the offset of its blank line's `\r\n\r\n`), searching from offset
    /// `from`, if it has.
    static func endOfHead(_ view: ByteBufferView, from: Int) -> Int? {
        var index = view.startIndex + from
        let last = view.endIndex - 3
        while index < last {
            if view[index] == 13 && view[index + 1] == 10 && view[index + 2] == 13 && view[index + 3] == 10 { return index - view.startIndex }
            index += 1
        }
        return nil
    }

    /// Plain HTTP: the HTTP pipeline after this handler reads everything from the start.
    private func installHTTP(_ context: ChannelHandlerContext) {
        state = .done
        do {
            let outcome = try setup.installHTTP(context.channel)
            resolve(.success(outcome))
        } catch {
            resolve(.failure(error))
            context.close(promise: nil)
            return
        }
        if let bytes = buffered.take() { context.fireChannelRead(wrapInboundOut(bytes)) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Asks the gate (on the socket's event loop) and carries out its decision.
    private func decide(_ upgrade: UpgradeHead, context: ChannelHandlerContext, headLength: Int) {
        state = .deciding
        let channel = context.channel
        let clientAddress = setup.addressing.clientAddress(on: channel, forwardedFor: upgrade.forwardedFor)
        let request = Request(
            head: HTTPRequest(
                method: .get,
                scheme: setup.secure ? "https" : "http",
                authority: upgrade.host,
                path: upgrade.target,
                headerFields: upgrade.fields
            ),
            body: .init(buffer: .init())
        )
        let gate = setup.gate
        let logger = setup.logger
        let decision = channel.eventLoop.makePromise(of: UpgradeGate.Decision.self)
        decision.completeWithTask { await gate.decide(request, clientAddress, logger) }
        let loopBound = NIOLoopBound((self, context), eventLoop: context.eventLoop)
        decision.futureResult.hop(to: context.eventLoop).whenSuccess { decision in
            let (handler, context) = loopBound.value
            guard case .deciding = handler.state else { return }
            switch decision {
            case .accept(let makeEndpoint):
                handler.upgrade(context, key: upgrade.key, headLength: headLength, endpoint: makeEndpoint())
            case .refuse(let refusal):
                handler.answer(context, refusal.status, headers: refusal.headers, body: refusal.body)
            }
        }
    }

    /// `101`, then the connection speaks WebSocket: the frame codec, protocol errors answered
    /// with their close codes, and a `WebSocketConnection` running `endpoint`.
    private func upgrade(_ context: ChannelHandlerContext, key: String, headLength: Int, endpoint: any WebSocketEndpoint) {
        state = .done
        let accept = Self.base64(LibCrypto.sha1(Array((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").utf8)))
        let response = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: \(accept)\r\n\r\n"
        // Flushed with the endpoint's first frames (one write for both), or just below.
        context.write(NIOAny(context.channel.allocator.buffer(string: response)), promise: nil)
        let connection = WebSocketConnection(configuration: setup.webSocket, endpoint: endpoint)
        do {
            try context.pipeline.syncOperations.addHandlers(
                [
                    WebSocketFrameEncoder(), ByteToMessageHandler(WebSocketFrameDecoder(maxFrameSize: setup.webSocket.maxMessageBytes)),
                    WebSocketProtocolErrorHandler(), connection,
                ],
                // This handler is the pipeline's last; added in order, the codec is in place
                // before the connection writes its first frame.
                position: .last
            )
        } catch {
            resolve(.failure(error))
            context.close(promise: nil)
            return
        }
        context.flush()
        resolve(.success(.websocket(context.channel, NIOLoopBound(connection, eventLoop: context.eventLoop))))
        if var rest = buffered.take() {
            rest.moveReaderIndex(forwardBy: headLength)
            if rest.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(rest)) }
        }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    /// Answers with `status` and `{"detail": ...}` and closes.
    private func answer(_ context: ChannelHandlerContext, _ status: HTTPResponse.Status, detail: String) {
        answer(context, status, headers: [:], body: #"{"detail":"\#(detail)"}"#)
    }

    /// Answers with `status`, `headers` and the JSON `body`, and closes.
    private func answer(_ context: ChannelHandlerContext, _ status: HTTPResponse.Status, headers: HTTPFields, body: String) {
        state = .done
        var text = "HTTP/1.1 \(status.code) \(status.reasonPhrase)\r\n"
        for field in headers where ![.contentType, .contentLength, .connection].contains(field.name) {
            text += "\(field.name): \(field.value)\r\n"
        }
        text += "Content-Type: application/json; charset=utf-8\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)"
        let channel = context.channel
        context.writeAndFlush(NIOAny(channel.allocator.buffer(string: text))).whenComplete { _ in channel.close(promise: nil) }
    }

    static func base64(_ bytes: [UInt8]) -> String {
        let alphabet = Array("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8)
        var out: [UInt8] = []
        var index = 0
        while index < bytes.count {
            let chunk = bytes[index..<min(index + 3, bytes.count)]
            let value = chunk.enumerated().reduce(0) { $0 | Int($1.element) << (16 - 8 * $1.offset) }
            for position in 0..<4 {
                out.append(position <= chunk.count ? alphabet[(value >> (18 - 6 * position)) & 63] : UInt8(ascii: "="))
            }
            index += 3
        }
        return String(decoding: out, as: UTF8.self)
    }
}

/// A WebSocket upgrade request's head, when it is one and is clean (RFC 9112 request line and
/// fields, RFC 6455 §4.2.1); nil for anything else, which the HTTP pipeline then reads. Parsed
/// over the bytes in one pass (a string-splitting version cost a tenth of a connect).
struct UpgradeHead {
    var target: String
    var key: String
    var host: String?
    var forwardedFor: [String]
    var fields: HTTPFields

    init?(_ head: ByteBufferView.SubSequence) {
        guard let parsed = head.withContiguousStorageIfAvailable({ Self.parse(UnsafeRawBufferPointer($0)) }) ?? Self.parse(Array(head)) else { return nil }
        self = parsed
    }

    private init(target: String, key: String, host: String?, forwardedFor: [String], fields: HTTPFields) {
        self.target = target
        self.key = key
        self.host = host
        self.forwardedFor = forwardedFor
        self.fields = fields
    }

    private static func parse(_ bytes: [UInt8]) -> UpgradeHead? {
        bytes.withUnsafeBytes { parse($0) }
    }

    private static func parse(_ bytes: UnsafeRawBufferPointer) -> UpgradeHead? {
        let count = bytes.count
        /// The index of the next CRLF at or after `from` (or the end).
        func lineEnd(from start: Int) -> Int {
            var index = start
            while index + 1 < count {
                if bytes[index] == 13 && bytes[index + 1] == 10 { return index }
                index += 1
            }
            return count
        }
        // Request line: GET SP origin-form SP HTTP/1.1
        let first = lineEnd(from: 0)
        let method: [UInt8] = Array("GET /".utf8)
        let version: [UInt8] = Array(" HTTP/1.1".utf8)
        guard first >= method.count + version.count - 1, (0..<4).allSatisfy({ bytes[$0] == method[$0] }), bytes[4] == UInt8(ascii: "/"),
            (0..<version.count).allSatisfy({ bytes[first - version.count + $0] == version[$0] })
        else { return nil }
        let targetEnd = first - version.count
        for index in 4..<targetEnd where bytes[index] <= 0x20 || bytes[index] == 0x7F { return nil }
        let target = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[4..<targetEnd]), as: UTF8.self)

        var fields = HTTPFields()
        var host: String?
        var forwardedFor: [String] = []
        var upgradeWebSocket = false
        var connectionUpgrade = false
        var version13 = false
        var keys: [String] = []
        var start = first + 2
        while start < count {
            let end = lineEnd(from: start)
            var colon = start
            while colon < end && bytes[colon] != UInt8(ascii: ":") {
                guard isTokenByte(bytes[colon]) else { return nil }
                colon += 1
            }
            guard colon > start, colon < end else { return nil }
            var valueStart = colon + 1
            var valueEnd = end
            while valueStart < valueEnd && (bytes[valueStart] == 32 || bytes[valueStart] == 9) { valueStart += 1 }
            while valueEnd > valueStart && (bytes[valueEnd - 1] == 32 || bytes[valueEnd - 1] == 9) { valueEnd -= 1 }
            var ascii = true
            for index in valueStart..<valueEnd {
                let byte = bytes[index]
                guard byte >= 32 || byte == 9, byte != 0x7F else { return nil }
                if byte >= 0x80 { ascii = false }
            }
            let nameBytes = UnsafeRawBufferPointer(rebasing: bytes[start..<colon])
            let valueBytes = UnsafeRawBufferPointer(rebasing: bytes[valueStart..<valueEnd])
            let name = String(decoding: nameBytes, as: UTF8.self)
            guard let value = ascii ? String(decoding: valueBytes, as: UTF8.self) : String(validating: valueBytes, as: UTF8.self),
                let fieldName = HTTPField.Name(name)
            else { return nil }
            fields.append(HTTPField(name: fieldName, value: value))
            // The fields the upgrade needs, matched on the bytes (no lowercased copies).
            if Self.named(nameBytes, Self.host) {
                host = host ?? value
            } else if Self.named(nameBytes, Self.forwardedForName) {
                forwardedFor.append(value)
            } else if Self.named(nameBytes, Self.upgradeName) {
                upgradeWebSocket = upgradeWebSocket || Self.hasToken(valueBytes, Self.websocketToken)
            } else if Self.named(nameBytes, Self.connectionName) {
                connectionUpgrade = connectionUpgrade || Self.hasToken(valueBytes, Self.upgradeName)
            } else if Self.named(nameBytes, Self.versionName) {
                version13 = value == "13"
            } else if Self.named(nameBytes, Self.keyName) {
                keys.append(value)
            }
            start = end + 2
        }
        guard upgradeWebSocket, connectionUpgrade, version13, keys.count == 1, keys[0].utf8.count == 24, keys[0].hasSuffix("==") else { return nil }
        return UpgradeHead(target: target, key: keys[0], host: host, forwardedFor: forwardedFor, fields: fields)
    }

    static let host = Array("host".utf8)
    static let forwardedForName = Array("x-forwarded-for".utf8)
    static let upgradeName = Array("upgrade".utf8)
    static let connectionName = Array("connection".utf8)
    static let versionName = Array("sec-websocket-version".utf8)
    static let keyName = Array("sec-websocket-key".utf8)

    /// Whether the field name `bytes` is `lowercase`, ignoring ASCII case.
    private static func named(_ bytes: UnsafeRawBufferPointer, _ lowercase: [UInt8]) -> Bool {
        guard bytes.count == lowercase.count else { return false }
        for index in 0..<bytes.count where bytes[index] | 0x20 != lowercase[index] | 0x20 { return false }
        return true
    }

    static let websocketToken = Array("websocket".utf8)

    /// Whether the comma-separated field value `bytes` lists `lowercase` (ignoring ASCII case
    /// and the spaces around each element).
    private static func hasToken(_ bytes: UnsafeRawBufferPointer, _ lowercase: [UInt8]) -> Bool {
        var start = 0
        while start <= bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: ",") { end += 1 }
            var first = start
            var last = end
            while first < last && (bytes[first] == 32 || bytes[first] == 9) { first += 1 }
            while last > first && (bytes[last - 1] == 32 || bytes[last - 1] == 9) { last -= 1 }
            if named(UnsafeRawBufferPointer(rebasing: bytes[first..<last]), lowercase) { return true }
            start = end + 1
        }
        return false
    }

    static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"): true
        default: "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}

extension String {
    /// Without leading and trailing spaces and tabs (HTTP's optional whitespace).
    func trimmingWhitespace() -> String {
        let bytes = utf8
        guard let first = bytes.firstIndex(where: { $0 != 32 && $0 != 9 }) else { return "" }
        let last = bytes.lastIndex(where: { $0 != 32 && $0 != 9 })!
        return String(self[first...last])
    }
}
