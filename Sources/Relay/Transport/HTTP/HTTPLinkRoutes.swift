/// The HTTP fallbacks (contract §7): links over Server-Sent Events and long polls.
import DeviceAuth
import Foundation
import HTTPTypes
import Hummingbird
import Logging
import NIOCore
import RelayCore
import RelayWebSocket
import ServiceLifecycle
import Synchronization

/// Contract §7: the same links, `seq` numbers, resume and messages as the WebSockets, carried
/// over plain HTTP for networks that break WebSockets. Each event stream and each poll is a
/// transport of the link (a generation, like a socket): a new one supersedes the last,
/// and one that goes away detaches the link exactly as a dropped socket does. Between polls the
/// link stays attached on a lease of `resume_grace_ms`; a lease that runs out is a transport
/// lost.
struct HTTPLinkRoutes: Sendable {
    let switchboard: Switchboard
    let admission: ClientAdmission
    let connection: LinkConnection
    let maxMessageBytes: Int
    let keepalive: Duration

    static let maxMessagesPerRequest = 100

    var routes: RouteCollection<RelayRequestContext> {
        let routes = RouteCollection(context: RelayRequestContext.self)
        routes.post("/api/link", use: open)
        routes.get("/api/link/events", use: events)
        routes.post("/api/link/send", use: send)
        routes.post("/api/link/poll", use: poll)
        return routes
    }

    // MARK: POST /api/link

    /// Opens (or resumes, with `{"resume_token","last_seq"}`) a link with the app's or the
    /// device's own credentials; answers its `hello`.
    @Sendable func open(_ request: Request, context: RelayRequestContext) async throws -> Response {
        if switchboard.isDraining { throw RelayHTTPError.restarting }
        let query = request.uri.queryParameters
        let party: Party = query.get("device_id") != nil || query.get("sig") != nil ? .device : .app
        let identity = try await self.admission.admit(
            request,
            query: query,
            as: party,
            from: request.headers[HTTPField.Name(ClientAddressing.header)!],
            logger: context.logger
        )
        let body = try await request.jsonObject(upTo: 4096, required: false)
        let resume = try ResumeRequest.requested(
            token: body["resume_token"].map { $0.stringValue.map(RequestField.present) ?? .malformed } ?? .absent,
            lastSeq: body["last_seq"].map { $0.intValue.map(RequestField.present) ?? .malformed } ?? .absent
        )
        let seed = try await switchboard.prepare(identity, resume: resume)
        let transport = TransportSlot()
        let admitted = switchboard.admit(identity, resume: resume, seed: seed) { [switchboard] in transport.drop(switchboard) }
        transport.set(admitted.link, generation: admitted.generation)
        switchboard.lease(admitted.link, generation: admitted.generation)
        context.logger.debug("HTTP link opened", metadata: ["link.id": "\(admitted.link.id)", "link.resumed": "\(admitted.resumed)"])
        return Response(
            status: .ok,
            headers: [.contentType: "application/json; charset=utf-8", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: connection.hello(admitted.link, resumed: admitted.resumed).text(seq: nil)))
        )
    }

    // MARK: GET /api/link/events

    /// Server-Sent Events: `id: <seq>`, `event: message`, `data: <json>`; `Last-Event-ID`
    /// resumes; a `: keepalive` comment every `keepalive`; a close (4001, 4002, 1001, 1008) is an
    /// `event: close` with `{"code","reason"}`, then the stream ends.
    @Sendable func events(_ request: Request, context: RelayRequestContext) async throws -> Response {
        let query = request.uri.queryParameters
        let link = try await authenticatedLink(id: query.get("link_id"), token: query.get("resume_token"))
        var lastSeq: Int?
        if let header = request.headers[HTTPField.Name("Last-Event-ID")!], !header.isEmpty {
            guard let value = Int(header), value >= 0 else { throw RelayHTTPError(.badRequest, "Last-Event-ID must be a seq number") }
            lastSeq = value
        }
        let transport = TransportSlot()
        let generation = try attach(link, resumingAfter: lastSeq, transport: transport)
        // Until the stream starts writing, the lease keeps the link (a client gone before the
        // first byte still ends up detached).
        switchboard.lease(link, generation: generation)
        let switchboard = switchboard
        let keepalive = keepalive
        let departure = await ClientDeparture.future(of: context.channel)
        let body = ResponseBody { writer in
            link.endLease(generation: generation)
            defer { switchboard.transportEnded(link, generation: generation) }
            try await writer.write(ByteBuffer(string: "retry: 2000\n\n"))
            // A server shutting down ends the stream (the shutdown service has already told
            // the client to go away).
            try await withGracefulShutdownHandler {
                try await stream(link, generation: generation, keepalive: keepalive, departure: departure, to: &writer)
            } onGracefulShutdown: {
                switchboard.transportEnded(link, generation: generation)
            }
            try await writer.finish(nil)
        }
        return Response(
            status: .ok,
            headers: [.contentType: "text/event-stream", .cacheControl: "no-cache", HTTPField.Name("X-Accel-Buffering")!: "no"],
            body: body
        )
    }

    private func stream(
        _ link: Link,
        generation: Int,
        keepalive: Duration,
        departure: EventLoopFuture<Void>?,
        to writer: inout any ResponseBodyWriter
    ) async throws {
        streaming: while true {
            switch await Self.nextEvent(link, generation: generation, timeout: keepalive, departure: departure) {
            case .event(.send(let frames)):
                var text = ""
                for frame in frames {
                    // An unnumbered message (an ack) has no id: it is never replayed.
                    if frame.seq > 0 { text += "id: \(frame.seq)\n" }
                    text += "event: message\ndata: \(frame.text)\n\n"
                }
                try await writer.write(ByteBuffer(string: text))
            case .event(.close(let code, let reason)):
                try await writer.write(ByteBuffer(string: "event: close\ndata: \(Self.closeObject(code: code, reason: reason))\n\n"))
                break streaming
            case .timedOut:
                if closeIfExpired(link) { continue }
                try await writer.write(ByteBuffer(string: ": keepalive\n\n"))
            case .superseded, .clientGone:
                break streaming
            }
        }
    }

    // MARK: POST /api/link/send

    /// `{"link_id","resume_token","messages":[...]}` → `{"accepted":N}`: each message is handled
    /// exactly as a WebSocket text frame (errors come back on the link); `accepted` counts those
    /// the link's rate limit let through.
    @Sendable func send(_ request: Request, context: RelayRequestContext) async throws -> Response {
        let body = try await request.jsonObject(upTo: Self.bodyLimit(maxMessageBytes))
        let messages = try Self.messages(body["messages"], maxMessageBytes: maxMessageBytes)
        if let id = body["link_id"]?.stringValue, let token = body["resume_token"]?.stringValue, switchboard.table.link(id: id) == nil,
            let forwarded = try await switchboard.table.forward(messages, toLink: id, resumeToken: token)
        {
            // The link waits on another node (its event stream or poll is there): the messages
            // go to that node, which handles them as from the link (and answers errors on it).
            return .json(.object(["accepted": .int(forwarded)]))
        }
        let link = try await authenticatedLink(id: body["link_id"]?.stringValue, token: body["resume_token"]?.stringValue)
        let accepted = await handle(messages, from: link)
        return .json(.object(["accepted": .int(accepted)]))
    }

    // MARK: POST /api/link/poll

    /// `{"link_id","resume_token","messages":[...],"last_seq":N,"wait":true,"timeout_ms":5000}`:
    /// sends, acks up to `last_seq` (and answers again what came after it), then answers
    /// `{"messages":[...]}` as soon as any are pending or after `timeout_ms` (100-15000). One
    /// waiting poll per link: a newer one ends it with an empty answer.
    @Sendable func poll(_ request: Request, context: RelayRequestContext) async throws -> Response {
        let body = try await request.jsonObject(upTo: Self.bodyLimit(maxMessageBytes))
        let link = try await authenticatedLink(id: body["link_id"]?.stringValue, token: body["resume_token"]?.stringValue)
        let messages = try Self.messages(body["messages"], maxMessageBytes: maxMessageBytes)
        let lastSeq = try Self.nonNegative(body["last_seq"], name: "last_seq")
        var wait = true
        if let value = body["wait"] {
            guard case .bool(let flag) = value else { throw RelayHTTPError(.badRequest, "wait must be true or false") }
            wait = flag
        }
        let timeout = min(max(try Self.nonNegative(body["timeout_ms"], name: "timeout_ms") ?? 5000, 100), 15_000)

        let departure = await ClientDeparture.future(of: context.channel)
        let transport = TransportSlot()
        let generation = try attach(link, resumingAfter: lastSeq, transport: transport)
        _ = await handle(messages, from: link)
        var answer: [String: JSONValue] = ["messages": .array([])]
        let waitFor: Duration = wait ? .milliseconds(timeout) : .zero
        switch await Self.nextEvent(link, generation: generation, timeout: waitFor, departure: departure) {
        case .event(.send(let frames)):
            answer["messages"] = .array(frames.map { .raw($0.text) })
            switchboard.lease(link, generation: generation)
        case .event(.close(let code, let reason)):
            answer["closed"] = .raw(Self.closeObject(code: code, reason: reason))
            switchboard.transportEnded(link, generation: generation)
        case .timedOut:
            if closeIfExpired(link) {
                switchboard.transportEnded(link, generation: generation)
            } else {
                switchboard.lease(link, generation: generation)
            }
        case .superseded:
            // A newer poll (or stream) has the link now.
            break
        case .clientGone:
            // Nobody will read the answer: the transport is lost now, not when a lease runs out.
            switchboard.transportEnded(link, generation: generation)
        }
        return .json(.object(answer))
    }

    // MARK: Parts

    /// The link named by a request, if its token matches.
    private func authenticatedLink(id: String?, token: String?) async throws -> Link {
        guard let id, let token else { throw RelayHTTPError(.badRequest, "link_id and resume_token are required") }
        // In a fleet, the link follows the request that names it.
        if switchboard.table.link(id: id) == nil { await switchboard.table.bringHere(linkID: id, resumeToken: token, on: switchboard) }
        guard let link = switchboard.table.link(id: id), !link.isEnded else {
            throw RelayHTTPError(.notFound, "Unknown link: open one with POST /api/link")
        }
        guard link.accepts(resumeToken: token) else { throw RelayHTTPError(.unauthorized, "resume_token does not match this link") }
        if link.tokenHasExpired() {
            throw RelayHTTPError(.unauthorized, "App token has expired: POST /api/link with a fresh token and this link's resume_token")
        }
        return link
    }

    /// A new transport for `link`; a replay that cannot be complete ends the link (410), as a
    /// WebSocket resume would give a fresh link.
    private func attach(_ link: Link, resumingAfter lastSeq: Int?, transport: TransportSlot) throws -> Int {
        guard
            let generation = switchboard.attachTransport(
                to: link,
                resumingAfter: lastSeq,
                dropTransport: { [switchboard] in transport.drop(switchboard) }
            )
        else {
            switchboard.end(link)
            throw RelayHTTPError(.gone, "Messages after that seq are no longer kept: open a new link with POST /api/link")
        }
        transport.set(link, generation: generation)
        return generation
    }

    /// An app link whose token expired closes its transport with 4001, as a socket would.
    private func closeIfExpired(_ link: Link) -> Bool {
        guard link.tokenHasExpired() else { return false }
        link.close(code: RelayCloseCode.tokenExpired, reason: "Token expired")
        return true
    }

    private func handle(_ messages: [JSONValue], from link: Link) async -> Int {
        var accepted = 0
        for message in messages where await switchboard.handle(message: message, from: link) { accepted += 1 }
        return accepted
    }

    enum Wait: Sendable {
        case event(Link.Event)
        case superseded
        case timedOut
        /// The client closed or lost its connection (`ClientDeparture`).
        case clientGone
    }

    /// The next event for the transport of `generation`, or `timedOut` after `timeout`, or
    /// `clientGone` as soon as `departure` completes. The waits run to their end, so an event
    /// taken as another wait finishes is still returned (and kept until acked).
    static func nextEvent(_ link: Link, generation: Int, timeout: Duration, departure: EventLoopFuture<Void>? = nil) async -> Wait {
        // A poll that does not wait takes what is ready now (a zero timer racing the wait for
        // it could win before that wait even started, and answer nothing).
        if timeout == .zero { return link.ready(generation: generation).map(Wait.event) ?? .timedOut }
        return await withTaskGroup(of: Wait?.self) { group in
            group.addTask {
                if let event = await link.next(generation: generation) { return .event(event) }
                return Task.isCancelled ? nil : .superseded
            }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return Task.isCancelled ? nil : .timedOut
            }
            if let departure {
                group.addTask {
                    // A future's wait cannot be cancelled: this one ends at the departure or
                    // when the group is cancelled, whichever comes first.
                    let cancelled = departure.eventLoop.makePromise(of: Void.self)
                    departure.cascade(to: cancelled)
                    await withTaskCancellationHandler {
                        try? await cancelled.futureResult.get()
                    } onCancel: {
                        cancelled.succeed()
                    }
                    return Task.isCancelled ? nil : .clientGone
                }
            }
            var outcome = Wait.timedOut
            var first = true
            for await result in group {
                if first {
                    group.cancelAll()
                    first = false
                }
                switch result {
                case .event?: outcome = result!
                case .superseded?: if case .timedOut = outcome { outcome = .superseded }
                case .clientGone?: if case .event = outcome {} else { outcome = .clientGone }
                case .timedOut?, nil: break
                }
            }
            return outcome
        }
    }

    private static func closeObject(code: UInt16, reason: String) -> String {
        JSONValue.object(["code": .int(Int(code)), "reason": .string(reason)]).serialized
    }

    /// A request body: up to four messages of the largest size, or many small ones.
    private static func bodyLimit(_ maxMessageBytes: Int) -> Int {
        4 * maxMessageBytes + 4096
    }

    private static func nonNegative(_ value: JSONValue?, name: String) throws -> Int? {
        guard let value else { return nil }
        guard let number = value.intValue, number >= 0 else { throw RelayHTTPError(.badRequest, "\(name) must be a non-negative integer") }
        return number
    }

    /// The `messages` array, decoded with the body; the whole request is refused (nothing
    /// handled) when one is larger than a WebSocket message may be, or there are too many.
    private static func messages(_ value: JSONValue?, maxMessageBytes: Int) throws -> [JSONValue] {
        guard let value else { return [] }
        guard case .array(let items) = value else { throw RelayHTTPError(.badRequest, "messages must be an array of message objects") }
        guard items.count <= maxMessagesPerRequest else {
            throw RelayHTTPError(.contentTooLarge, "At most \(maxMessagesPerRequest) messages per request")
        }
        for item in items where item.serializedByteCount > maxMessageBytes {
            throw RelayHTTPError(.contentTooLarge, "A message is larger than \(maxMessageBytes) bytes")
        }
        return items
    }
}

/// Which link and generation an HTTP transport is, once known, so the link can drop it (a
/// slow reader) the same way it drops a socket.
final class TransportSlot: Sendable {
    private let target = Mutex<(link: Link, generation: Int)?>(nil)

    func set(_ link: Link, generation: Int) {
        target.withLock { $0 = (link, generation) }
    }

    func drop(_ switchboard: Switchboard) {
        guard let (link, generation) = target.withLock({ $0 }) else { return }
        switchboard.transportEnded(link, generation: generation)
    }
}
