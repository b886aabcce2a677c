/// A link to the relay for a Swift app or robot: connect, resume, reliable sending, token
/// refresh, refusals; what the relay sends as typed events.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOWebSocket
import RelayCore

/// One link to the relay, as an app or a device.
///
/// It connects, and whenever the socket drops (or the relay says `go_away`) it resumes the same
/// link with `resume_token` and `last_seq`, after a delay that grows with each failure (with
/// jitter) and honours `Retry-After` and `reconnect_after_ms`. Every message it sends is numbered
/// with `cseq` and kept until the relay acks it, and sent again after a resume; a forwarded
/// message whose `peer_cseq` it delivered already, or a `seq` it has, is not delivered twice. It
/// acks what it received. An app's token is sent again with `auth` before it expires. A 401 or
/// 403 stops it with `RelayClientError.refused`; close 4002 with `.replaced`.
///
/// ```swift
/// let client = try RelayClient.app(url: "wss://relay.example.com") { try await myBackend.token() }
/// try await client.start()
/// let session = try await client.request(device: "robot-1")
/// for try await event in client.events { ... }
/// ```
public actor RelayClient {
    public typealias TokenProvider = @Sendable () async throws -> String

    /// Everything the relay sends, in order, once. Ends when the client is closed; throws the
    /// `RelayClientError` that stopped it otherwise.
    public nonisolated let events: AsyncThrowingStream<RelayEvent, any Error>

    /// The last `hello`.
    public private(set) var hello: Hello?
    /// How many times a `hello` came (1 + resumes and new links).
    public private(set) var connects = 0
    /// Messages sent and not yet acked by the relay.
    public var unacknowledged: Int { sender.unacknowledged }

    private let output: AsyncThrowingStream<RelayEvent, any Error>.Continuation
    private let endpoint: EndpointURL
    private let identity: Identity
    private let options: Options
    private var logger: Logger { options.logger }

    private var socket: ClientWebSocket?
    private var lastSeq = 0
    private var ackedSeq = 0
    private var sender: ReliableSender
    /// The highest `peer_cseq` delivered, per session.
    private var peerCseqs: [String: Int] = [:]
    /// Session requests not answered yet: asked, answered before the asker waited, or waited for.
    private var requests: [String: PendingRequest] = [:]
    private var reconnectURL: EndpointURL?
    private var reconnectAfter: Duration?
    private var closing = false
    private var stopped: RelayClientError?
    private var runner: Task<Void, Never>?
    /// The `exp` of the app token sent last (unix seconds).
    private var tokenExpiry: Double?
    private var starting: CheckedContinuation<Void, any Error>?
    private var acknowledging: [CheckedContinuation<Void, Never>] = []
    /// Wakes the pacer (frames wait for the pace).
    private let paceSignal = WakeSignal()

    /// A client for the relay at `url` (`ws://`, `wss://`, or `http(s)://`; a path prefix is kept,
    /// the endpoint's path is added).
    public init(url: String, identity: Identity, options: Options = Options()) throws {
        let path: String =
            switch identity {
            case .app: "/ws/app"
            case .device: "/ws/device"
            }
        guard var endpoint = EndpointURL(url), !endpoint.target.contains("?") else { throw InvalidRelayURL(url: url) }
        endpoint.target = String(endpoint.target.reversed().drop { $0 == "/" }.reversed()) + path
        self.endpoint = endpoint
        self.identity = identity
        self.options = options
        self.sender = ReliableSender(burst: options.messageBurst, perSecond: options.messagesPerSecond)
        (events, output) = AsyncThrowingStream.makeStream(bufferingPolicy: .unbounded)
    }

    /// An app; `token` returns a current JWT.
    public static func app(url: String, options: Options = Options(), token: @escaping TokenProvider) throws -> RelayClient {
        try RelayClient(url: url, identity: .app(token), options: options)
    }

    /// A device with its id and secret.
    public static func device(url: String, id: String, secret: String, options: Options = Options()) throws -> RelayClient {
        try RelayClient(url: url, identity: .device(id: id, secret: secret), options: options)
    }

    // MARK: Running

    /// Connects and keeps the link up; returns once the first `hello` came, or throws the
    /// refusal (`RelayClientError.refused`).
    public func start() async throws {
        if let stopped { throw stopped }
        guard runner == nil else { return }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            starting = continuation
            // The client's one unstructured task: a library has no service group to run in;
            // everything else it does runs as this task's children.
            runner = Task { await self.run() }
        }
    }

    /// Ends the link: the socket closes (1000) and nothing is resumed; `events` ends.
    public func close() async {
        closing = true
        socket?.close()
        runner?.cancel()
        await runner?.value
        stop(.closed)
    }

    /// Drops the socket without a word, as a lost network does: the link resumes.
    public func dropConnection() {
        socket?.abort()
    }

    /// Returns once the relay has acked everything sent so far (or the client stopped).
    public func waitUntilAcknowledged() async {
        guard sender.unacknowledged > 0, stopped == nil else { return }
        await withCheckedContinuation { acknowledging.append($0) }
    }

    // MARK: Sending

    /// Sends a message of `type` with `fields`, numbered with the next `cseq`: now, or with the
    /// next resume. It is kept until the relay acks it. Returns its `cseq`.
    @discardableResult
    public func send(_ type: String, _ fields: [String: JSONValue] = [:]) -> Int {
        let (cseq, text) = sender.number(type, fields)
        if socket != nil { transmit(text) }
        return cseq
    }

    /// Asks for a session with a device (apps): its credentials, or the relay's `RelayError`.
    public func request(
        device deviceID: String,
        ttl: Int? = nil,
        metadata: [String: JSONValue]? = nil,
        timeout: Duration = .seconds(15)
    ) async throws -> SessionCredentials {
        if let stopped { throw stopped }
        let requestID = Self.randomHex(bytes: 8)
        var fields: [String: JSONValue] = ["device_id": .string(deviceID), "request_id": .string(requestID)]
        if let ttl { fields["ttl"] = .number(Double(ttl)) }
        if let metadata { fields["metadata"] = .object(metadata) }
        requests[requestID] = .asked
        send("webrtc_request", fields)
        // The answer and the timeout race as child tasks; the timeout answers the request.
        return try await withThrowingTaskGroup(of: SessionCredentials?.self) { group in
            group.addTask { try await self.answer(to: requestID) }
            group.addTask {
                try? await Task.sleep(for: timeout)
                return nil
            }
            while let result = try await group.next() {
                if let credentials = result {
                    group.cancelAll()
                    return credentials
                }
                answer(requestID, with: .failure(RelayClientError.timedOut))
            }
            throw RelayClientError.timedOut
        }
    }

    // MARK: The link

    private func run() async {
        var failures = 0
        while !closing, !Task.isCancelled {
            var delay: Duration?
            do {
                let (url, headers) = try await connectRequest()
                let outcome = try await ClientWebSocket.connect(
                    to: url,
                    headers: headers,
                    tls: options.tls,
                    timeout: .nanoseconds(Int64(options.connectTimeout / .nanoseconds(1))),
                    maxMessageSize: options.maxMessageSize,
                    group: MultiThreadedEventLoopGroup.singleton
                )
                switch outcome {
                case .refused(let refusal) where refusal.status == 401 || refusal.status == 403:
                    throw RelayClientError.refused(status: refusal.status, detail: refusal.detail)
                case .refused(let refusal):
                    logger.info("connect refused (\(refusal.status) \(refusal.detail)); retrying")
                    delay = refusal.retryAfter.map { .seconds($0) }
                case .open(let socket):
                    if try await serve(socket) { failures = 0 }
                }
            } catch let error as RelayClientError {
                stop(error)
                return
            } catch {
                logger.info("connect failed (\(error)); retrying")
            }
            socket = nil
            if closing { break }
            if let after = reconnectAfter {
                delay = after
                reconnectAfter = nil
            }
            let wait = delay ?? backoff(failures: failures)
            if delay == nil { failures += 1 }
            try? await Task.sleep(for: wait)
        }
        stop(.closed)
    }

    /// The delay before the next try: doubling from the initial backoff, with jitter.
    private func backoff(failures: Int) -> Duration {
        let doubled = options.initialBackoff * Double(1 << min(failures, 20))
        return min(options.maximumBackoff, doubled) * Double.random(in: 0.5...1.0)
    }

    /// The URL and headers of the next connect: credentials, and the resume when there is a link.
    private func connectRequest() async throws -> (EndpointURL, [(String, String)]) {
        var url = reconnectURL ?? endpoint
        var headers: [(String, String)] = []
        switch identity {
        case .app(let token):
            let current = try await token()
            tokenExpiry = Self.expiry(of: current)
            headers.append(("Authorization", "Bearer " + current))
        case .device(let id, let secret):
            url = url.adding(query: Self.signedQuery(deviceID: id, secret: secret))
        }
        if let hello {
            url = url.adding(query: "resume_token=\(Self.percentEncoded(hello.resumeToken))&last_seq=\(lastSeq)")
        }
        return (url, headers)
    }

    /// Serves one socket until it ends, with the pacer (and for an app, the token's refresher)
    /// beside it as child tasks; true when it got as far as a `hello`.
    private func serve(_ socket: ClientWebSocket) async throws -> Bool {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await self.sendAsPaced() }
            if case .app(let token) = identity { group.addTask { await self.keepTokenFresh(token) } }
            defer { group.cancelAll() }
            return try await read(socket)
        }
    }

    private func read(_ socket: ClientWebSocket) async throws -> Bool {
        defer {
            if closing || Task.isCancelled { socket.abort() }
        }
        var opened = false
        for await item in socket.inbound {
            switch item {
            case .text(let text) where opened:
                receive(text)
            case .text(let text):
                guard let fields = try? JSONParser.object(text), let hello = Hello(fields) else {
                    socket.abort()
                    return false
                }
                opened = true
                begin(hello, on: socket)
            case .ended(let code, let reason):
                if code == 4002 { throw RelayClientError.replaced }
                logger.info("socket ended (\(code.map(String.init) ?? "no close frame") \(reason)); resuming")
            }
        }
        return opened
    }

    private func begin(_ hello: Hello, on socket: ClientWebSocket) {
        if hello.resumed {
            acked(through: hello.ackedCseq)
        } else if self.hello != nil {
            // The old link could not be resumed: its sessions and what it had not delivered are gone.
            logger.warning("the link could not be resumed; a new one starts")
            lastSeq = 0
            ackedSeq = 0
            sender.forgetUnacked()
            wakeAcknowledging()
            peerCseqs.removeAll()
            for requestID in requests.keys { answer(requestID, with: .failure(RelayClientError.linkReset)) }
            output.yield(.linkReset)
        }
        self.hello = hello
        connects += 1
        reconnectURL = nil
        self.socket = socket
        let resent = sender.unacknowledged
        sender.resendUnacked()
        transmitWaiting()
        logger.info("link \(hello.linkID) \(hello.resumed ? "resumed" : "opened")\(resent == 0 ? "" : ", \(resent) sent again")")
        output.yield(.connected(hello))
        starting?.resume()
        starting = nil
    }

    private func receive(_ text: String) {
        guard let fields = try? JSONParser.object(text) else { return }
        let seq = fields["seq"]?.intValue
        if fields["type"]?.stringValue == "ack", seq == nil {
            acked(through: fields["cseq"]?.intValue ?? 0)
            return
        }
        if let seq {
            guard seq > lastSeq else { return }
            lastSeq = seq
            if seq - ackedSeq >= options.ackEvery {
                transmit(#"{"type":"ack","seq":\#(seq)}"#)
                ackedSeq = seq
            }
        }
        if let number = fields["peer_cseq"]?.intValue, let session = fields["session_id"]?.stringValue {
            guard number > peerCseqs[session, default: 0] else { return }
            peerCseqs[session] = number
        }
        let event = RelayEvent(fields)
        switch event {
        case .goAway(let after, let url):
            reconnectAfter = .milliseconds(after)
            reconnectURL = url.flatMap(EndpointURL.init).map { $0.target == "/" ? EndpointURL(replacingHostOf: endpoint, with: $0) : $0 }
            socket?.close(code: .goingAway)
        case .credentials(let credentials):
            if let requestID = credentials.requestID { answer(requestID, with: .success(credentials)) }
        case .error(let error):
            if let requestID = error.requestID { answer(requestID, with: .failure(error)) }
        case .sessionClosed(let session, _, _):
            peerCseqs[session] = nil
        default:
            break
        }
        output.yield(event)
    }

    /// Sends `text` on the current socket as the pace allows, after what is waiting.
    private func transmit(_ text: String) {
        sender.enqueue(text)
        if sender.paceWait == nil { transmitWaiting() }
    }

    /// Sends what the pace lets go now; wakes the pacer when some must wait.
    private func transmitWaiting() {
        guard let socket else { return }
        for frame in sender.release(now: .now) { socket.send(frame) }
        if sender.paceWait != nil { paceSignal.raise() }
    }

    /// While a socket serves the link: sends what waited for the pace when the pace allows.
    private func sendAsPaced() async {
        while !Task.isCancelled {
            if let wait = sender.paceWait {
                try? await Task.sleep(for: wait)
                if !Task.isCancelled { transmitWaiting() }
            } else {
                await paceSignal.wait()
            }
        }
    }

    private func acked(through number: Int) {
        if sender.acked(through: number) { wakeAcknowledging() }
    }

    private func wakeAcknowledging() {
        for waiter in acknowledging { waiter.resume() }
        acknowledging.removeAll()
    }

    /// A session request's answer: to whoever waits for it, or kept until it does.
    private func answer(_ requestID: String, with result: Result<SessionCredentials, any Error>) {
        switch requests[requestID] {
        case .waiting(let continuation):
            requests[requestID] = nil
            continuation.resume(with: result)
        case .asked:
            requests[requestID] = .answered(result)
        case .answered, nil:
            break
        }
    }

    /// Waits for the answer to the session request `requestID`.
    private func answer(to requestID: String) async throws -> SessionCredentials {
        if case .answered(let result) = requests[requestID] {
            requests[requestID] = nil
            return try result.get()
        }
        guard requests[requestID] != nil else { throw stopped ?? RelayClientError.timedOut }
        return try await withCheckedThrowingContinuation { requests[requestID] = .waiting($0) }
    }

    private func stop(_ error: RelayClientError) {
        guard stopped == nil else { return }
        stopped = error
        if error == .closed { output.finish() } else { output.finish(throwing: error) }
        starting?.resume(throwing: error)
        starting = nil
        for requestID in requests.keys { answer(requestID, with: .failure(error)) }
        wakeAcknowledging()
    }

    /// While a socket serves an app's link: its token goes again with `auth`
    /// `tokenRefreshMargin` before its `exp`.
    private func keepTokenFresh(_ token: @escaping TokenProvider) async {
        while !Task.isCancelled, let expiry = tokenExpiry {
            let left = Duration.seconds(expiry - Date().timeIntervalSince1970) - options.tokenRefreshMargin
            try? await Task.sleep(for: max(.seconds(1), left))
            guard !Task.isCancelled else { return }
            guard let fresh = try? await token() else {
                // The provider failed: ask again shortly (at `exp` the link resumes with a new token).
                try? await Task.sleep(for: .seconds(5))
                continue
            }
            refreshed(fresh)
        }
    }

    private func refreshed(_ token: String) {
        tokenExpiry = Self.expiry(of: token)
        send("auth", ["token": .string(token)])
        logger.info("token refreshed")
    }
}

/// A session request between `webrtc_request` and its answer.
private enum PendingRequest {
    case asked
    case answered(Result<SessionCredentials, any Error>)
    case waiting(CheckedContinuation<SessionCredentials, any Error>)
}
