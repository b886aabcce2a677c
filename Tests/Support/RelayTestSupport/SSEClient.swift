import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A Server-Sent Events client: a real HTTP/1.1 connection (SwiftNIO's HTTP client codec,
/// chunked decoding included) whose body is parsed as the HTML standard's event-stream
/// interpretation says (`SSEParser`). It also keeps the raw text, to check comments such as
/// `: keepalive`.
public final class SSEClient: Sendable {
    public struct Head: Sendable {
        public var status: Int
        public var headers: [String: String]
    }

    private enum Item: Sendable {
        case head(Head)
        case event(SSEParser.Event)
        case body(String)
    }

    private let items: Mailbox<Item>
    private let task: Task<Void, Never>
    /// The response's status and headers (names lowercased).
    public let head: Head
    /// The response body when it is not an event stream (an error's JSON).
    public let errorBody: String

    public struct NoResponse: Error {}

    /// Opens `GET path` on 127.0.0.1:`port` and waits for the response head.
    public static func connect(port: Int, path: String, headers: [(String, String)] = []) async throws -> SSEClient {
        let channel = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton)
            .connect(host: "127.0.0.1", port: port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
        var requestHeaders = HTTPHeaders([("Host", "127.0.0.1:\(port)"), ("Accept", "text/event-stream")])
        requestHeaders.add(contentsOf: headers)
        let items = Mailbox<Item>()
        let rawBox = RawText()
        let task = Task {
            var parser = SSEParser()
            var isStream = false
            var body = ""
            do {
                try await channel.executeThenClose { inbound, outbound in
                    try await outbound.write(.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: path, headers: requestHeaders)))
                    try await outbound.write(.end(nil))
                    for try await part in inbound {
                        switch part {
                        case .head(let head):
                            var fields: [String: String] = [:]
                            for (name, value) in head.headers { fields[name.lowercased()] = value }
                            isStream = fields["content-type"] == "text/event-stream"
                            items.append(.head(Head(status: Int(head.status.code), headers: fields)))
                        case .body(let buffer):
                            guard isStream else {
                                body += String(buffer: buffer)
                                continue
                            }
                            rawBox.append(String(buffer: buffer))
                            for event in parser.consume(buffer.readableBytesView) { items.append(.event(event)) }
                        case .end:
                            if !isStream { items.append(.body(body)) }
                            return
                        }
                    }
                }
            } catch {}
            items.finish()
        }
        guard case .head(let head)? = try await items.next() else {
            task.cancel()
            throw NoResponse()
        }
        var errorBody = ""
        if head.headers["content-type"] != "text/event-stream", case .body(let text)? = try await items.next() { errorBody = text }
        return SSEClient(head: head, errorBody: errorBody, items: items, raw: rawBox, task: task)
    }

    private init(head: Head, errorBody: String, items: Mailbox<Item>, raw: RawText, task: Task<Void, Never>) {
        self.head = head
        self.errorBody = errorBody
        self.items = items
        self.raw = raw
        self.task = task
    }

    private final class RawText: Sendable {
        private let text = Mutex("")
        func append(_ more: String) { text.withLock { $0 += more } }
        var value: String { text.withLock { $0 } }
    }

    private let raw: RawText

    /// Everything the stream has sent so far, as text.
    public var text: String { raw.value }

    /// The next event, or nil when the stream ended; throws `TimedOut` when none comes in time.
    public func next() async throws -> SSEParser.Event? {
        while let item = try await items.next() {
            switch item {
            case .event(let event): return event
            case .body, .head: continue
            }
        }
        return nil
    }

    /// Drops the connection (a client that goes away).
    public func close() {
        task.cancel()
    }
}

/// The event-stream parser of the HTML standard (§9.2.6): lines end in CRLF, LF or CR; a line
/// starting with ':' is a comment; `data` lines join with LF; `id`, `event`, `retry`; a blank
/// line dispatches an event that has data.
public struct SSEParser: Sendable {
    public struct Event: Sendable, Equatable {
        public var id: String?
        public var event: String
        public var data: String
    }

    private var line: [UInt8] = []
    private var lastWasCR = false
    private var data: [String] = []
    private var type = ""
    /// The last event id set by the stream (what a reconnecting client sends as Last-Event-ID).
    public private(set) var lastEventID: String?
    public private(set) var retry: Int?

    public init() {}

    public mutating func consume(_ bytes: some Sequence<UInt8>) -> [Event] {
        var events: [Event] = []
        for byte in bytes {
            if byte == 0x0A, lastWasCR {
                lastWasCR = false
                continue
            }
            lastWasCR = byte == 0x0D
            if byte == 0x0A || byte == 0x0D {
                if let event = process(String(decoding: line, as: UTF8.self)) { events.append(event) }
                line.removeAll(keepingCapacity: true)
            } else {
                line.append(byte)
            }
        }
        return events
    }

    private mutating func process(_ line: String) -> Event? {
        if line.isEmpty {
            defer {
                data = []
                type = ""
            }
            guard !data.isEmpty else { return nil }
            return Event(id: lastEventID, event: type.isEmpty ? "message" : type, data: data.joined(separator: "\n"))
        }
        if line.hasPrefix(":") { return nil }
        var field = line
        var value = ""
        if let colon = line.firstIndex(of: ":") {
            field = String(line[..<colon])
            value = String(line[line.index(after: colon)...])
            if value.hasPrefix(" ") { value.removeFirst() }
        }
        switch field {
        case "data": data.append(value)
        case "event": type = value
        case "id": if !value.contains("\0") { lastEventID = value }
        case "retry": if let milliseconds = Int(value) { retry = milliseconds }
        default: break
        }
        return nil
    }
}
