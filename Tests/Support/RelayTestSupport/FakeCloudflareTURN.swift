import Foundation
import Hummingbird
import Logging
import NIOCore
import ServiceLifecycle
import Synchronization

/// A local stand-in for Cloudflare's TURN API (`rtc.live.cloudflare.com/v1`), for tests and
/// benchmarks on loopback. It behaves like the real one: a bearer token check, 201 with the
/// array shape, the older single-object shape, port-53 URLs, error statuses with Cloudflare's
/// error envelope, latency, slow answers and dropped connections. It records every request.
public final class FakeCloudflareTURN: Sendable {
    /// How the next request is answered.
    public enum Behavior: Sendable, Equatable {
        /// 201 with `iceServers` as an array (the documented shape), port-53 URLs included.
        case created
        /// 201 with `iceServers` as a single object (the older endpoint).
        case createdObjectShape
        /// This HTTP status with Cloudflare's error envelope.
        case status(Int)
        /// Answer `.created` only after this long.
        case slow(Duration)
        /// Close the connection without answering.
        case drop
        /// Never answer (a hanging upstream); the connection closes when the fake stops.
        case hang
    }

    /// A request as the fake saw it.
    public struct Recorded: Sendable {
        public var path: String
        public var authorization: String?
        public var body: String
        /// The decoded JSON body, when it is an object.
        public var json: [String: String] {
            guard let object = try? JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any] else { return [:] }
            return object.mapValues { "\($0)" }
        }
    }

    public let keyID: String
    public let apiToken: String
    /// Added before every answer (network and upstream time).
    public let latency: Duration

    private struct State {
        var script: [Behavior] = []
        var requests: [Recorded] = []
        var mints = 0
        var stopped = false
        var hanging: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    private let arrivals: AsyncStream<Recorded>
    private let arrivalsContinuation: AsyncStream<Recorded>.Continuation

    public init(keyID: String = "test-key-id", apiToken: String = "test-api-token", latency: Duration = .zero) {
        self.keyID = keyID
        self.apiToken = apiToken
        self.latency = latency
        (arrivals, arrivalsContinuation) = AsyncStream.makeStream(of: Recorded.self, bufferingPolicy: .bufferingOldest(10_000))
    }

    /// Requests in the order they arrive, as they arrive (for awaiting one the relay makes in
    /// the background, such as a revocation). One reader at a time.
    public var arrivingRequests: AsyncStream<Recorded> { arrivals }

    /// The next requests are answered with these, in order; afterwards with `.created`.
    public func script(_ behaviors: Behavior...) {
        script(behaviors)
    }

    public func script(_ behaviors: [Behavior]) {
        state.withLock { $0.script.append(contentsOf: behaviors) }
    }

    /// Ends every `.hang` (the fake is stopping).
    private func releaseHanging() {
        let hanging = state.withLock { state in
            state.stopped = true
            defer { state.hanging.removeAll() }
            return state.hanging
        }
        for continuation in hanging { continuation.resume() }
    }

    public var requests: [Recorded] { state.withLock { $0.requests } }

    /// Runs the fake on 127.0.0.1 (an ephemeral port) for the duration of `body`.
    public func run<T: Sendable>(_ body: @Sendable (_ baseURL: String) async throws -> T) async throws -> T {
        var logger = Logger(label: "fake-cloudflare")
        logger.logLevel = .critical
        let router = Router(context: FakeContext.self)
        router.post("/turn/keys/:key/credentials/generate-ice-servers") { request, context in
            try await self.answerMint(request, context: context)
        }
        router.post("/turn/keys/:key/credentials/:username/revoke") { request, context in
            try await self.answerRevoke(request, context: context)
        }
        let (portStream, portContinuation) = AsyncStream.makeStream(of: Int.self, bufferingPolicy: .bufferingNewest(1))
        let app = Application(
            router: router,
            configuration: .init(address: .hostname("127.0.0.1", port: 0)),
            onServerRunning: { channel in
                portContinuation.yield(channel.localAddress?.port ?? 0)
                portContinuation.finish()
            },
            logger: logger
        )
        return try await withThrowingTaskGroup(of: Void.self) { group in
            let serviceGroup = ServiceGroup(configuration: .init(services: [app], logger: logger))
            group.addTask { try await serviceGroup.run() }
            var ports = portStream.makeAsyncIterator()
            guard let port = await ports.next() else { throw FakeError.didNotStart }
            do {
                let result = try await body("http://127.0.0.1:\(port)")
                releaseHanging()
                await serviceGroup.triggerGracefulShutdown()
                return result
            } catch {
                releaseHanging()
                await serviceGroup.triggerGracefulShutdown()
                throw error
            }
        }
    }

    enum FakeError: Error { case didNotStart }

    private func record(_ request: Request) async throws -> Recorded {
        let body = try await request.body.collect(upTo: 1 << 16)
        let recorded = Recorded(path: request.uri.path, authorization: request.headers[.authorization], body: String(buffer: body))
        state.withLock { $0.requests.append(recorded) }
        arrivalsContinuation.yield(recorded)
        return recorded
    }

    private func nextBehavior() -> Behavior {
        state.withLock { state in state.script.isEmpty ? .created : state.script.removeFirst() }
    }

    private func authorized(_ recorded: Recorded, context: FakeContext) -> Bool {
        recorded.authorization == "Bearer \(apiToken)" && context.parameters.get("key") == keyID
    }

    private func answerMint(_ request: Request, context: FakeContext) async throws -> Response {
        let recorded = try await record(request)
        if latency > .zero { try await Task.sleep(for: latency) }
        guard authorized(recorded, context: context) else { return Self.error(401, "Authentication error") }
        switch nextBehavior() {
        case .created:
            return Self.created(
                arrayShape: true,
                mint: state.withLock {
                    $0.mints += 1
                    return $0.mints
                }
            )
        case .createdObjectShape:
            return Self.created(
                arrayShape: false,
                mint: state.withLock {
                    $0.mints += 1
                    return $0.mints
                }
            )
        case .status(let status):
            return Self.error(status, status == 429 ? "Too many requests" : "Upstream said \(status)")
        case .slow(let delay):
            try await Task.sleep(for: delay)
            return Self.created(
                arrayShape: true,
                mint: state.withLock {
                    $0.mints += 1
                    return $0.mints
                }
            )
        case .drop:
            try await context.channel.close()
            throw FakeError.didNotStart
        case .hang:
            await withCheckedContinuation { continuation in
                let stopped = state.withLock { state in
                    if !state.stopped { state.hanging.append(continuation) }
                    return state.stopped
                }
                if stopped { continuation.resume() }
            }
            try await context.channel.close()
            throw FakeError.didNotStart
        }
    }

    private func answerRevoke(_ request: Request, context: FakeContext) async throws -> Response {
        let recorded = try await record(request)
        guard authorized(recorded, context: context) else { return Self.error(401, "Authentication error") }
        switch nextBehavior() {
        case .status(let status): return Self.error(status, "Upstream said \(status)")
        case .drop:
            try await context.channel.close()
            throw FakeError.didNotStart
        default: return Response(status: .noContent)
        }
    }

    /// The credential username of the `mint`-th answer, so tests can predict revoke paths.
    public static func username(mint: Int) -> String { "fake-turn-user-\(mint)" }

    static func created(arrayShape: Bool, mint: Int) -> Response {
        let turn = """
            {"urls":["turn:turn.cloudflare.com:3478?transport=udp","turn:turn.cloudflare.com:53?transport=udp",\
            "turn:turn.cloudflare.com:3478?transport=tcp","turn:turn.cloudflare.com:80?transport=tcp",\
            "turns:turn.cloudflare.com:5349?transport=tcp","turns:turn.cloudflare.com:443?transport=tcp"],\
            "username":"\(username(mint: mint))","credential":"fake-turn-credential-\(mint)"}
            """
        let stun = #"{"urls":["stun:stun.cloudflare.com:3478","stun:stun.cloudflare.com:53"]}"#
        let body = arrayShape ? #"{"iceServers":[\#(stun),\#(turn)]}"# : #"{"iceServers":\#(turn)}"#
        return Response(status: .created, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    static func error(_ status: Int, _ message: String) -> Response {
        let body = #"{"success":false,"errors":[{"code":\#(status),"message":"\#(message)"}]}"#
        return Response(
            status: HTTPResponse.Status(code: status),
            headers: [.contentType: "application/json"],
            body: .init(byteBuffer: ByteBuffer(string: body))
        )
    }
}

/// Keeps the connection's channel, so the fake can drop a connection.
struct FakeContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }
}
