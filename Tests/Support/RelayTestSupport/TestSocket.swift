import Foundation
import HTTPTypes
import HummingbirdWSClient
import Logging
import NIOCore
import NIOWebSocket
import Synchronization

/// A decoded JSON object received on a socket.
public typealias JSONObject = [String: Any]

/// A real WebSocket client driven step by step: send, await the next message, await the close.
public final class TestSocket: Sendable {
    public enum Outgoing: Sendable {
        case text(String)
        /// A message split into continuation frames of at most `frameSize` bytes.
        case fragmented(String, frameSize: Int)
        case binary([UInt8])
        case close
    }

    private let inbox: Mailbox<String>
    private let outgoing: AsyncStream<Outgoing>.Continuation
    private let connection: Task<WebSocketCloseFrame?, any Error>
    /// The `hello` the relay sent first. Written once in `connect`, before the socket is handed out.
    public private(set) nonisolated(unsafe) var hello: JSONObject = [:]

    private init(inbox: Mailbox<String>, outgoing: AsyncStream<Outgoing>.Continuation, connection: Task<WebSocketCloseFrame?, any Error>) {
        self.inbox = inbox
        self.outgoing = outgoing
        self.connection = connection
    }

    /// Connects and reads the relay's `hello`; throws when the relay refuses the upgrade.
    public static func connect(_ url: String, headers: HTTPFields = [:]) async throws -> TestSocket {
        let (stream, continuation) = AsyncStream.makeStream(of: Outgoing.self, bufferingPolicy: .bufferingOldest(10_000))
        let inbox = Mailbox<String>()
        let logger = Logger(label: "test-client")
        let connection = Task {
            defer { inbox.finish() }
            return try await WebSocketClient.connect(
                url: url,
                configuration: .init(maxFrameSize: 1 << 20, additionalHeaders: headers, autoPing: .disabled),
                logger: logger
            ) { inbound, outbound, _ in
                try await withThrowingTaskGroup(of: Void.self) { group in
                    group.addTask {
                        for await item in stream {
                            switch item {
                            case .text(let text): try await outbound.write(.text(text))
                            case .fragmented(let text, let frameSize):
                                var bytes = ByteBuffer(string: text)
                                var first = true
                                while bytes.readableBytes > 0 {
                                    let slice = bytes.readSlice(length: min(frameSize, bytes.readableBytes))!
                                    let frame = WebSocketFrame(fin: bytes.readableBytes == 0, opcode: first ? .text : .continuation, data: slice)
                                    try await outbound.write(.custom(frame))
                                    first = false
                                }
                            case .binary(let bytes): try await outbound.write(.binary(ByteBuffer(bytes: bytes)))
                            case .close:
                                try await outbound.close(.normalClosure, reason: nil)
                                return
                            }
                        }
                    }
                    for try await message in inbound.messages(maxSize: 1 << 22) {
                        if case .text(let text) = message {
                            MessageCatalog.record(text)
                            inbox.append(text)
                        }
                        // A client that stops reading: the relay's writes back up in TCP.
                        if inbox.isPaused { try await Task.sleep(for: .seconds(3600)) }
                    }
                    group.cancelAll()
                }
            }
        }
        let socket = TestSocket(inbox: inbox, outgoing: continuation, connection: connection)
        guard let first = try await socket.inbox.next() else {
            _ = try await connection.value
            throw SocketClosedBeforeHello()
        }
        socket.hello = try Self.decode(first)
        return socket
    }

    public struct SocketClosedBeforeHello: Error {}

    public struct SocketClosed: Error {
        public init() {}
    }

    public struct UnexpectedMessage: Error, CustomStringConvertible {
        public init(expected: String, received: String) {
            self.expected = expected
            self.received = received
        }

        public var expected: String
        public var received: String
        public var description: String { "expected a \(expected) message, received \(received)" }
    }

    public func send(_ object: JSONObject) throws {
        outgoing.yield(.text(String(decoding: try JSONSerialization.data(withJSONObject: object), as: UTF8.self)))
    }

    public func send(raw: Outgoing) {
        outgoing.yield(raw)
    }

    /// The next message, decoded; throws if the socket closes first (or nothing comes `within`).
    public func next(within timeout: Duration = Mailbox<String>.defaultWait) async throws -> JSONObject {
        guard let text = try await inbox.next(within: timeout) else { throw SocketClosed() }
        return try Self.decode(text)
    }

    /// The next message, which must have `type` (else this throws, naming what came instead).
    public func next(_ type: String) async throws -> JSONObject {
        let message = try await next()
        guard message["type"] as? String == type else { throw UnexpectedMessage(expected: type, received: "\(message)") }
        return message
    }

    /// Proves the link is idle: a `ping` is answered by the very next message.
    public func expectNothingPending() async throws {
        try send(["type": "ping"])
        _ = try await next("pong")
    }

    /// Stops reading from the socket (after the next frame), like a client that hangs.
    public func stopReading() {
        inbox.pause()
    }

    /// Starts a clean close from the client side.
    public func close() {
        outgoing.yield(.close)
    }

    /// The close frame the relay sent, once the connection has ended.
    public func closeCode() async throws -> Int? {
        try await connection.value?.closeCode.code
    }

    public static func decode(_ text: String) throws -> JSONObject {
        guard let object = try JSONSerialization.jsonObject(with: Data(text.utf8)) as? JSONObject else {
            throw NotAnObject(text: text)
        }
        return object
    }

    public struct NotAnObject: Error {
        var text: String
    }
}

extension WebSocketErrorCode {
    public var code: Int {
        switch self {
        case .normalClosure: 1000
        case .goingAway: 1001
        case .protocolError: 1002
        case .unacceptableData: 1003
        case .dataInconsistentWithMessage: 1007
        case .policyViolation: 1008
        case .messageTooLarge: 1009
        case .missingExtension: 1010
        case .unexpectedServerError: 1011
        case .unknown(let code): Int(code)
        }
    }
}

/// Received items, in order, for one reader. A reader waits at most `within` (then
/// `TimedOut` is thrown) and stops waiting when its task is cancelled, so an item that never
/// comes fails one test instead of freezing the run.
public final class Mailbox<Element: Sendable>: Sendable {
    private struct Waiter {
        var id: Int
        var continuation: CheckedContinuation<Element?, any Error>
        var timer: Task<Void, Never>?
    }

    private struct State {
        var messages: [Element] = []
        var finished = false
        var waiter: Waiter?
        var nextWaiterID = 0
    }

    private let state = Mutex(State())

    /// How long a reader waits for the next item by default.
    public static var defaultWait: Duration { .seconds(20) }

    public init() {}
    private let paused = Mutex(false)

    var isPaused: Bool { paused.withLock { $0 } }

    func pause() {
        paused.withLock { $0 = true }
    }

    public func append(_ text: Element) {
        let waiter = state.withLock { state -> Waiter? in
            if let waiter = state.waiter {
                state.waiter = nil
                return waiter
            }
            state.messages.append(text)
            return nil
        }
        waiter?.timer?.cancel()
        waiter?.continuation.resume(returning: text)
    }

    public func finish() {
        let waiter = state.withLock { state -> Waiter? in
            state.finished = true
            defer { state.waiter = nil }
            return state.waiter
        }
        waiter?.timer?.cancel()
        waiter?.continuation.resume(returning: nil)
    }

    /// The next item; nil once finished; throws `TimedOut` after `within`, or when cancelled.
    public func next(within timeout: Duration = Mailbox.defaultWait) async throws -> Element? {
        let id = state.withLock { state in
            defer { state.nextWaiterID += 1 }
            return state.nextWaiterID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { continuation in
                let ready: Result<Element?, any Error>? = state.withLock { state in
                    if !state.messages.isEmpty { return .success(state.messages.removeFirst()) }
                    if state.finished { return .success(nil) }
                    // Cancelled before this reader waited: the cancellation handler found no one.
                    if Task.isCancelled { return .failure(CancellationError()) }
                    state.waiter = Waiter(id: id, continuation: continuation)
                    return nil
                }
                if let ready { return continuation.resume(with: ready) }
                let timer = Task { [self] in
                    guard (try? await Task.sleep(for: timeout)) != nil else { return }
                    give(up: id, with: TimedOut(what: "the next item (\(timeout))"))
                }
                let stillWaiting = state.withLock { state in
                    guard state.waiter?.id == id else { return false }
                    state.waiter?.timer = timer
                    return true
                }
                if !stillWaiting { timer.cancel() }
            }
        } onCancel: {
            give(up: id, with: CancellationError())
        }
    }

    /// Ends the wait of reader `id` (if it still waits) with `error`.
    private func give(up id: Int, with error: any Error) {
        let waiter = state.withLock { state -> Waiter? in
            guard let waiter = state.waiter, waiter.id == id else { return nil }
            state.waiter = nil
            return waiter
        }
        waiter?.timer?.cancel()
        waiter?.continuation.resume(throwing: error)
    }
}

/// A wait that did not end in time.
public struct TimedOut: Error, CustomStringConvertible {
    public var what: String
    public init(what: String) { self.what = what }
    public var description: String { "timed out waiting for \(what)" }
}
