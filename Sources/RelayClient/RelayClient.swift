/// A link to the relay for a Swift app or robot: connect, resume, reliable sending, token
/// refresh, refusals; what the relay sends as typed events.
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import DequeModule
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

    /// Who connects: an app with a JWT (asked for at each connect and before `exp`), or a
    /// device with its secret (each connect signed with a fresh nonce).
    public enum Identity: Sendable {
        case app(TokenProvider)
        case device(id: String, secret: String)
    }

    public struct Options: Sendable {
        /// The first delay before connecting again, doubled after each failure up to the maximum.
        public var initialBackoff: Duration = .milliseconds(250)
        public var maximumBackoff: Duration = .seconds(30)
        /// An app's token is refreshed this long before its `exp`.
        public var tokenRefreshMargin: Duration = .seconds(60)
        /// The client acks after this many messages.
        public var ackEvery = 16
        /// What the client sends is paced to stay under the relay's per-link limit (contract §5:
        /// 50 in a burst, 10/s by default), with a margin: over it the relay drops messages.
        public var messageBurst = 40
        public var messagesPerSecond = 9.0
        public var connectTimeout: Duration = .seconds(10)
        public var maxMessageSize = 1 << 20
        /// For `wss://`: the TLS settings (default: the system's trust roots).
        public var tls: TLSConfiguration?
        public var logger = Logger(label: "relay-client")

        public init() {}
    }

    /// Everything the relay sends, in order, once. Ends when the client is closed; throws the
    /// `RelayClientError` that stopped it otherwise.
    public nonisolated let events: AsyncThrowingStream<RelayEvent, any Error>

    /// The last `hello`.
    public private(set) var hello: Hello?
    /// How many times a `hello` came (1 + resumes and new links).
    public private(set) var connects = 0
    /// Messages sent and not yet acked by the relay.
    public var unacknowledged: Int { unacked.count }

    private let output: AsyncThrowingStream<RelayEvent, any Error>.Continuation
    private let endpoint: EndpointURL
    private let identity: Identity
    private let options: Options
    private var logger: Logger { options.logger }

    private var socket: ClientWebSocket?
    private var lastSeq = 0
    private var ackedSeq = 0
    private var cseq = 0
    /// Numbered messages not acked yet, oldest first: (cseq, text).
    private var unacked: [(Int, String)] = []
    /// The highest `peer_cseq` delivered, per session.
    private var peerCseqs: [String: Int] = [:]
    private var waiting: [String: CheckedContinuation<SessionCredentials, any Error>] = [:]
    /// Each waiting request's timeout, cancelled when it is answered.
    private var timers: [String: Task<Void, Never>] = [:]
    private var reconnectURL: EndpointURL?
    private var reconnectAfter: Duration?
    private var closing = false
    private var stopped: RelayClientError?
    private var runner: Task<Void, Never>?
    private var refresher: Task<Void, Never>?
    /// The `exp` of the app token sent last (unix seconds).
    private var tokenExpiry: Double?
    private var starting: CheckedContinuation<Void, any Error>?
    private var acknowledging: [CheckedContinuation<Void, Never>] = []
    /// Frames waiting for the pace, oldest first, and the pace.
    private var outgoing: Deque<String> = []
    private var pace: TokenBucket<ContinuousClock.Instant>
    private var pacing: Task<Void, Never>?

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
        self.pace = TokenBucket(burst: options.messageBurst, perSecond: options.messagesPerSecond)
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
            runner = Task { await self.run() }
        }
    }

    /// Ends the link: the socket closes (1000) and nothing is resumed; `events` ends.
    public func close() async {
        closing = true
        refresher?.cancel()
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
        guard !unacked.isEmpty, stopped == nil else { return }
        await withCheckedContinuation { acknowledging.append($0) }
    }

    // MARK: Sending

    /// Sends a message of `type` with `fields`, numbered with the next `cseq`: now, or with the
    /// next resume. It is kept until the relay acks it. Returns its `cseq`.
    @discardableResult
    public func send(_ type: String, _ fields: [String: JSONValue] = [:]) -> Int {
        cseq += 1
        var message = fields
        message["type"] = .string(type)
        message["cseq"] = .number(Double(cseq))
        let text = JSONValue.object(message).serialized
        unacked.append((cseq, text))
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
        send("webrtc_request", fields)
        return try await withCheckedThrowingContinuation { continuation in
            waiting[requestID] = continuation
            timers[requestID] = Task { [weak self] in
                guard (try? await Task.sleep(for: timeout)) != nil else { return }
                await self?.answer(requestID, with: .failure(RelayClientError.timedOut))
            }
        }
    }

    @discardableResult
    public func sendOffer(session: String, sdp: String) -> Int {
        send("webrtc_offer", ["session_id": .string(session), "sdp": .string(sdp)])
    }

    @discardableResult
    public func sendAnswer(session: String, sdp: String) -> Int {
        send("webrtc_answer", ["session_id": .string(session), "sdp": .string(sdp)])
    }

    /// One candidate, or nil for the end of candidates.
    @discardableResult
    public func sendICE(session: String, candidate: ICECandidate?) -> Int {
        send("webrtc_ice", ["session_id": .string(session), "candidate": candidate?.json ?? .null])
    }

    /// A batch of candidates; `complete` when there are no more.
    @discardableResult
    public func sendICE(session: String, candidates: [ICECandidate], complete: Bool) -> Int {
        send("webrtc_ice", ["session_id": .string(session), "candidates": .array(candidates.map(\.json)), "complete": .bool(complete)])
    }

    @discardableResult
    public func closeSession(_ session: String, reason: String = "normal") -> Int {
        send("webrtc_close", ["session_id": .string(session), "reason": .string(reason)])
    }

    /// A device declines a session instead of offering.
    @discardableResult
    public func reject(session: String, reason: String = "busy") -> Int {
        send("webrtc_reject", ["session_id": .string(session), "reason": .string(reason)])
    }

    /// A device describes itself (`device_info`); send it again after `.linkReset`.
    @discardableResult
    public func describe(capabilities: [String: JSONValue]) -> Int {
        send("device_info", ["capabilities": .object(capabilities)])
    }

    /// An app asks for the presence of devices (`device_status` events).
    @discardableResult
    public func watch(devices: [String]) -> Int {
        send("watch", ["device_ids": .array(devices.map(JSONValue.string))])
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

    /// Serves one socket until it ends; true when it got as far as a `hello`.
    private func serve(_ socket: ClientWebSocket) async throws -> Bool {
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
            unacked.removeAll()
            wakeAcknowledging()
            peerCseqs.removeAll()
            for requestID in waiting.keys { answer(requestID, with: .failure(RelayClientError.linkReset)) }
            output.yield(.linkReset)
        }
        self.hello = hello
        connects += 1
        reconnectURL = nil
        // What was not acked goes first, in order: a higher cseq ahead of a lower one would make
        // that one a duplicate. What waited for the old socket is among it.
        self.socket = socket
        outgoing = Deque(unacked.map(\.1))
        pacing?.cancel()
        pacing = nil
        transmitWaiting()
        logger.info("link \(hello.linkID) \(hello.resumed ? "resumed" : "opened")\(unacked.isEmpty ? "" : ", \(unacked.count) sent again")")
        output.yield(.connected(hello))
        starting?.resume()
        starting = nil
        scheduleRefresh()
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
        outgoing.append(text)
        transmitWaiting()
    }

    private func transmitWaiting() {
        guard let socket, pacing == nil else { return }
        while let text = outgoing.first {
            let now = ContinuousClock.now
            guard pace.take(now: now) else {
                let wait = pace.durationUntilToken(at: now)
                pacing = Task { [weak self] in
                    try? await Task.sleep(for: wait)
                    await self?.paced()
                }
                return
            }
            outgoing.removeFirst()
            socket.send(text)
        }
    }

    private func paced() {
        pacing = nil
        transmitWaiting()
    }

    private func acked(through number: Int) {
        unacked.removeFirst(unacked.prefix { $0.0 <= number }.count)
        if unacked.isEmpty { wakeAcknowledging() }
    }

    private func wakeAcknowledging() {
        for waiter in acknowledging { waiter.resume() }
        acknowledging.removeAll()
    }

    private func answer(_ requestID: String, with result: Result<SessionCredentials, any Error>) {
        timers.removeValue(forKey: requestID)?.cancel()
        waiting.removeValue(forKey: requestID)?.resume(with: result)
    }

    private func stop(_ error: RelayClientError) {
        guard stopped == nil else { return }
        stopped = error
        refresher?.cancel()
        pacing?.cancel()
        if error == .closed { output.finish() } else { output.finish(throwing: error) }
        starting?.resume(throwing: error)
        starting = nil
        for requestID in waiting.keys { answer(requestID, with: .failure(error)) }
        wakeAcknowledging()
    }

    /// An app's token goes again with `auth` `tokenRefreshMargin` before its `exp`.
    private func scheduleRefresh() {
        guard case .app(let token) = identity, refresher == nil else { return }
        let margin = options.tokenRefreshMargin
        refresher = Task { [weak self] in
            while !Task.isCancelled {
                guard let expiry = await self?.tokenExpiry else { return }
                let left = Duration.seconds(expiry - Date().timeIntervalSince1970) - margin
                try? await Task.sleep(for: max(.seconds(1), left))
                guard !Task.isCancelled else { return }
                guard let fresh = try? await token() else {
                    // The provider failed: ask again shortly (at `exp` the link resumes with a new token).
                    try? await Task.sleep(for: .seconds(5))
                    continue
                }
                await self?.refreshed(fresh)
            }
        }
    }

    private func refreshed(_ token: String) {
        tokenExpiry = Self.expiry(of: token)
        send("auth", ["token": .string(token)])
        logger.info("token refreshed")
    }

    // MARK: Credentials

    /// Contract §1.2: `device_id`, `ts`, a fresh nonce and `sig` = hex(HMAC-SHA256(secret, id\nts\nnonce)).
    static func signedQuery(deviceID: String, secret: String, now: Int = Int(Date().timeIntervalSince1970)) -> String {
        let nonce = randomHex(bytes: 16)
        let signature = DeviceKey.hmacSHA256Hex(key: secret, message: "\(deviceID)\n\(now)\n\(nonce)")
        return "device_id=\(percentEncoded(deviceID))&ts=\(now)&nonce=\(nonce)&sig=\(signature)"
    }

    /// The `exp` of a JWT (unverified: only to know when to refresh it).
    static func expiry(of token: String) -> Double? {
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3 else { return nil }
        var base64 = String(parts[1]).replacing("-", with: "+").replacing("_", with: "/")
        base64 += String(repeating: "=", count: (4 - base64.utf8.count % 4) % 4)
        guard let data = Data(base64Encoded: base64), let claims = try? JSONParser.object(String(decoding: data, as: UTF8.self)),
            case .number(let exp)? = claims["exp"]
        else { return nil }
        return exp
    }

    static func randomHex(bytes: Int) -> String {
        var generator = SystemRandomNumberGenerator()
        let digits = Array("0123456789abcdef")
        return String((0..<bytes * 2).map { _ in digits[Int(generator.next() % 16)] })
    }

    static func percentEncoded(_ text: String) -> String {
        var out = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                out.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                out += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return out
    }
}

/// The relay's URL could not be read as `ws(s)://` or `http(s)://` host[:port][/prefix].
public struct InvalidRelayURL: Error, Sendable {
    public var url: String
}

extension EndpointURL {
    /// `other`'s host and scheme with `base`'s path (a `reconnect_url` naming only another node).
    init(replacingHostOf base: EndpointURL, with other: EndpointURL) {
        self = other
        self.target = base.target
    }
}

extension String {
    fileprivate func leftPadded(to width: Int) -> String {
        String(repeating: "0", count: max(0, width - count)) + self
    }
}
