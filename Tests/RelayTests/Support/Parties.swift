import DeviceAuth
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import RelayTestSupport
import Synchronization
import Testing

/// How a client reaches the relay (contract §4 and §7).
enum Transport: String, CaseIterable, Sendable, CustomStringConvertible {
    case webSocket = "WebSocket"
    case events = "SSE+send"
    case poll = "long-poll"

    var description: String { rawValue }
}

/// One side of a session over any transport: its `hello`, and messages in and out.
protocol Party: Sendable {
    var hello: JSONObject { get }
    func send(_ object: JSONObject) async throws
    func next() async throws -> JSONObject
    /// Goes away without a word (the transport drops).
    func vanish() async
}

extension Party {
    /// The next message, which must have `type`.
    func next(_ type: String) async throws -> JSONObject {
        let message = try await next()
        guard message["type"] as? String == type else { throw TestSocket.UnexpectedMessage(expected: type, received: "\(message)") }
        return message
    }
}

struct WebSocketParty: Party {
    let socket: TestSocket
    var hello: JSONObject { socket.hello }
    func send(_ object: JSONObject) async throws { try socket.send(object) }
    func next() async throws -> JSONObject { try await socket.next() }
    func vanish() async { socket.close() }
}

/// A plain HTTP/1.1 client of the relay with JSON in and out.
struct HTTPClient: Sendable {
    let client: TestClient

    init(port: Int) {
        client = TestClient(host: "127.0.0.1", port: port, configuration: .init(timeout: .seconds(30)))
        client.connect()
    }

    func post(_ path: String, headers: HTTPFields = [:], json: JSONObject?) async throws -> (status: HTTPResponse.Status, json: JSONObject) {
        var headers = headers
        headers[.contentType] = "application/json"
        let body = try json.map { String(decoding: try JSONSerialization.data(withJSONObject: $0), as: UTF8.self) } ?? ""
        let response = try await client.post(path, headers: headers, body: ByteBuffer(string: body))
        let object = (try? JSONSerialization.jsonObject(with: Data(String(buffer: response.body ?? ByteBuffer()).utf8)) as? JSONObject) ?? [:]
        return (response.status, object)
    }

    func shutdown() async {
        try? await client.shutdown()
    }
}

/// Credentials for `POST /api/link`: an app's bearer token or a device's signed query.
enum LinkCredentials: Sendable {
    case app(token: String)
    case device(query: String)

    var path: String {
        switch self {
        case .app: "/api/link"
        case .device(let query): "/api/link?\(query)"
        }
    }

    var headers: HTTPFields {
        switch self {
        case .app(let token): [.authorization: "Bearer \(token)"]
        case .device: [:]
        }
    }
}

/// A link's `hello`, kept as the text the relay sent.
struct Hello: Sendable {
    let text: String
    var object: JSONObject { (try? JSONSerialization.jsonObject(with: Data(text.utf8)) as? JSONObject) ?? [:] }
    var linkID: String { object["link_id"] as? String ?? "" }
    var resumeToken: String { object["resume_token"] as? String ?? "" }
}

/// Opens a link with `POST /api/link`; its `hello`.
func openHTTPLink(port: Int, _ credentials: LinkCredentials, resume: JSONObject? = nil) async throws -> Hello {
    let http = HTTPClient(port: port)
    let opened = try await http.post(credentials.path, headers: credentials.headers, json: resume)
    await http.shutdown()
    guard opened.status == .ok else { throw HTTPFailure(opened.status, opened.json) }
    return Hello(text: String(decoding: try JSONSerialization.data(withJSONObject: opened.json), as: UTF8.self))
}

struct HTTPFailure: Error, CustomStringConvertible {
    var description: String

    init(_ status: HTTPResponse.Status, _ json: JSONObject) {
        description = "HTTP \(status.code): \(json)"
    }
}

/// An app or device on Server-Sent Events (receiving) and `POST /api/link/send` (sending).
final class EventStreamParty: Party {
    let link: Hello
    let stream: SSEClient
    private let http: HTTPClient
    var hello: JSONObject { link.object }

    /// The stream from `port`; sends to `sendPort` (another node of a fleet) when given.
    init(port: Int, hello: Hello, lastEventID: Int? = nil, sendPort: Int? = nil) async throws {
        self.link = hello
        let (linkID, token) = (hello.linkID, hello.resumeToken)
        stream = try await SSEClient.connect(
            port: port,
            path: "/api/link/events?link_id=\(linkID)&resume_token=\(token)",
            headers: lastEventID.map { [("Last-Event-ID", String($0))] } ?? []
        )
        http = HTTPClient(port: sendPort ?? port)
    }

    func send(_ object: JSONObject) async throws {
        let sent = try await http.post(
            "/api/link/send",
            json: ["link_id": link.linkID, "resume_token": link.resumeToken, "messages": [object]]
        )
        guard sent.status == .ok else { throw HTTPFailure(sent.status, sent.json) }
    }

    func next() async throws -> JSONObject {
        guard let event = try await stream.next() else { throw TestSocket.SocketClosed() }
        guard event.event == "message" else { return ["type": "sse:\(event.event)", "data": event.data] }
        let message = try #require(try JSONSerialization.jsonObject(with: Data(event.data.utf8)) as? JSONObject)
        #expect(event.id == (message["seq"] as? Int).map(String.init), "id: is the seq")
        return message
    }

    func vanish() async {
        stream.close()
        await http.shutdown()
    }
}

/// An app or device on long-polling: a loop keeps one poll waiting; sending is a poll that
/// answers at once. Messages are taken once each by `seq` (two polls may both answer one).
final class PollParty: Party {
    let link: Hello
    var hello: JSONObject { link.object }
    private let waiting: HTTPClient
    private let sending: HTTPClient
    private let inbox = Mailbox<Data>()
    private let lastSeq = Mutex(0)
    private let loop = Mutex<Task<Void, Never>?>(nil)

    /// Sends with `POST /api/link/send` instead of a poll that carries the messages.
    private let sendsAlone: Bool

    /// Waits on `port`; sends to `sendPort` (another node of a fleet) when given, with
    /// `POST /api/link/send` when `sendsAlone` (a poll carries `last_seq` too: two in flight
    /// at once may ack out of order).
    init(port: Int, hello: Hello, lastSeq: Int = 0, sendPort: Int? = nil, sendsAlone: Bool = false) {
        self.link = hello
        self.sendsAlone = sendsAlone
        waiting = HTTPClient(port: port)
        sending = HTTPClient(port: sendPort ?? port)
        self.lastSeq.withLock { $0 = lastSeq }
        let task = Task { [weak self] in
            while !Task.isCancelled {
                guard let self else { return }
                do {
                    try await self.poll(with: [], wait: true, client: self.waiting)
                } catch {
                    self.inbox.finish()
                    return
                }
            }
        }
        loop.withLock { $0 = task }
    }

    /// The error that ended the polling loop, if any.
    var failure: String? { failed.withLock { $0 } }
    private let failed = Mutex<String?>(nil)

    private func poll(with messages: [JSONObject], wait: Bool, client: HTTPClient) async throws {
        let answer = try await client.post(
            "/api/link/poll",
            json: [
                "link_id": link.linkID, "resume_token": link.resumeToken, "messages": messages,
                "last_seq": lastSeq.withLock { $0 }, "wait": wait, "timeout_ms": 1000,
            ]
        )
        guard answer.status == .ok else {
            failed.withLock { $0 = "poll(wait: \(wait)) answered \(answer.status.code) \(answer.json)" }
            throw HTTPFailure(answer.status, answer.json)
        }
        for message in answer.json["messages"] as? [JSONObject] ?? [] {
            guard let seq = message["seq"] as? Int else {
                // Unnumbered (an ack, contract §11): never answered twice.
                if let data = try? JSONSerialization.data(withJSONObject: message) { inbox.append(data) }
                continue
            }
            lastSeq.withLock { last in
                guard seq > last else { return }
                last = seq
                if let data = try? JSONSerialization.data(withJSONObject: message) { inbox.append(data) }
            }
        }
        if answer.json["closed"] != nil { throw TestSocket.SocketClosed() }
    }

    func send(_ object: JSONObject) async throws {
        guard sendsAlone else { return try await poll(with: [object], wait: false, client: sending) }
        let sent = try await sending.post("/api/link/send", json: ["link_id": link.linkID, "resume_token": link.resumeToken, "messages": [object]])
        guard sent.status == .ok else { throw HTTPFailure(sent.status, sent.json) }
    }

    func next() async throws -> JSONObject {
        guard let data = try await inbox.next() else { throw TestSocket.SocketClosed() }
        return try #require(try JSONSerialization.jsonObject(with: data) as? JSONObject)
    }

    func vanish() async {
        loop.withLock { $0?.cancel() }
        await waiting.shutdown()
        await sending.shutdown()
    }

    deinit {
        loop.withLock { $0?.cancel() }
    }
}

extension TestRelay {
    /// An app or a device on `transport`.
    func party(_ transport: Transport, app userID: String? = nil, device deviceID: String = "robot-1") async throws -> any Party {
        let credentials: LinkCredentials = userID.map { .app(token: appToken($0, devices: [deviceID])) } ?? .device(query: deviceQuery(deviceID))
        switch transport {
        case .webSocket:
            switch credentials {
            case .app(let token):
                return WebSocketParty(
                    socket: try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/app", headers: [.authorization: "Bearer \(token)"])
                )
            case .device(let query):
                return WebSocketParty(socket: try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/device?\(query)"))
            }
        case .events:
            return try await EventStreamParty(port: port, hello: try await openHTTPLink(port: port, credentials))
        case .poll:
            return PollParty(port: port, hello: try await openHTTPLink(port: port, credentials))
        }
    }
}
