/// libcurl behind one small Swift type: bounded HTTPS transfers on a thread pool.
import CCurl
import DequeModule
import NIOCore
import NIOPosix
import Synchronization

/// The relay's only door to libcurl: HTTPS POSTs for TURN providers, run on a small thread pool
/// (never an event loop), with warm connections, hard timeouts and a bound on waiting calls.
/// A call's timeouts count from the call, not from the moment a thread takes it: one waiting
/// for a free thread behind transfers to a hanging upstream fails (`timedOut`) at its own
/// deadline, and a transfer gets only what is left of it.
public final class CurlClient: Sendable {
    public struct Configuration: Sendable {
        public var connectTimeoutMilliseconds = 2000
        public var totalTimeoutMilliseconds = 5000
        /// Transfers running at once (one thread each).
        public var maxConcurrent = 8
        /// Calls waiting for a free transfer slot before new ones fail fast.
        public var maxQueued = 256
        /// Larger response bodies abort the transfer.
        public var maxResponseBytes = 256 * 1024
        /// Allow plain `http` (only for a loopback base URL that tests configure).
        public var allowPlainHTTP = false

        public init() {}
    }

    public struct Response: Sendable {
        public var status: Int
        public var body: [UInt8]
    }

    public enum Failure: Error, Sendable, Equatable {
        case timedOut
        case transport(String)
        case overloaded
        /// The calling task was cancelled: the transfer was aborted (within about a second,
        /// libcurl's progress interval on an idle connection).
        case cancelled
    }

    public let configuration: Configuration
    private let pool: NIOThreadPool
    private let idleHandles = Mutex<[EasyHandle]>([])
    private let slots: Slots

    private static let globalInit: Void = {
        curl_global_init(Int(CURL_GLOBAL_SSL | CURL_GLOBAL_WIN32))
    }()

    public init(configuration: Configuration = .init()) {
        _ = Self.globalInit
        self.configuration = configuration
        self.pool = NIOThreadPool(numberOfThreads: configuration.maxConcurrent)
        self.slots = Slots(limit: configuration.maxConcurrent, maxWaiting: configuration.maxQueued)
        pool.start()
    }

    /// Stops the worker threads; call once no transfer is in flight.
    public func shutdown() async throws {
        try await pool.shutdownGracefully()
    }

    /// POSTs `body` to `url` with `headers` (`Name: value` lines), within the configured total
    /// timeout from now.
    public func post(url: String, headers: [String], body: [UInt8]) async throws(Failure) -> Response {
        try await transfer(url: url, headers: headers, body: body)
    }

    /// GETs `url` with `headers`, within the configured total timeout from now.
    public func get(url: String, headers: [String]) async throws(Failure) -> Response {
        try await transfer(url: url, headers: headers, body: nil)
    }

    /// One transfer: a POST of `body`, or a GET when it is nil.
    private func transfer(url: String, headers: [String], body: [UInt8]?) async throws(Failure) -> Response {
        guard !Task.isCancelled else { throw .cancelled }
        let deadline = ContinuousClock.now + .milliseconds(configuration.totalTimeoutMilliseconds)
        switch await slots.acquire(until: deadline) {
        case .acquired: break
        case .full: throw .overloaded
        case .timedOut: throw .timedOut
        }
        defer { slots.release() }
        var transfer = configuration
        let left = deadline - ContinuousClock.now
        let leftMilliseconds = max(1, Int(left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000))
        transfer.totalTimeoutMilliseconds = min(transfer.totalTimeoutMilliseconds, leftMilliseconds)
        transfer.connectTimeoutMilliseconds = min(transfer.connectTimeoutMilliseconds, leftMilliseconds)
        let handle = idleHandles.withLock { $0.popLast() } ?? EasyHandle()
        let result: Result<Response, Failure>
        let cancelled = CancelFlag()
        do {
            result = try await withTaskCancellationHandler {
                try await pool.runIfActive { [transfer] in
                    handle.perform(url: url, headers: headers, body: body, configuration: transfer, cancelled: cancelled)
                }
            } onCancel: {
                cancelled.raise()
            }
        } catch {
            throw .transport("transfer pool stopped")
        }
        // A handle keeps its connection alive for the next transfer to the same host.
        idleHandles.withLock { handles in
            if handles.count < self.configuration.maxConcurrent { handles.append(handle) }
        }
        return try result.get()
    }
}

/// One libcurl easy handle. Used by one thread at a time: it is taken out of the idle list for
/// exactly one transfer, so sharing it as Sendable is safe.
private final class EasyHandle: @unchecked Sendable {
    let curl: UnsafeMutableRawPointer

    init() {
        guard let curl = curl_easy_init() else { fatalError("curl_easy_init failed") }
        self.curl = curl
    }

    deinit {
        curl_easy_cleanup(curl)
    }

    /// The body received so far, with its cap; reached through the write callback's userdata.
    final class Sink {
        var bytes: [UInt8] = []
        let limit: Int
        init(limit: Int) { self.limit = limit }
    }

    func perform(
        url: String,
        headers: [String],
        body: [UInt8]?,
        configuration: CurlClient.Configuration,
        cancelled: CancelFlag
    ) -> Result<CurlClient.Response, CurlClient.Failure> {
        // Reset options but keep the connection cache.
        curl_easy_reset(curl)
        var headerList: UnsafeMutablePointer<curl_slist>?
        for header in headers { headerList = curl_slist_append(headerList, header) }
        defer { curl_slist_free_all(headerList) }
        let sink = Sink(limit: configuration.maxResponseBytes)
        let code: CURLcode = withExtendedLifetime((sink, cancelled)) {
            _ = relay_curl_setopt_string(curl, CURLOPT_URL, url)
            _ = relay_curl_setopt_long(curl, CURLOPT_NOSIGNAL, 1)
            _ = relay_curl_setopt_long(curl, CURLOPT_FOLLOWLOCATION, 0)
            _ = relay_curl_setopt_string(curl, CURLOPT_PROTOCOLS_STR, configuration.allowPlainHTTP ? "http,https" : "https")
            _ = relay_curl_setopt_long(curl, CURLOPT_SSL_VERIFYPEER, 1)
            _ = relay_curl_setopt_long(curl, CURLOPT_SSL_VERIFYHOST, 2)
            _ = relay_curl_setopt_long(curl, CURLOPT_CONNECTTIMEOUT_MS, configuration.connectTimeoutMilliseconds)
            _ = relay_curl_setopt_long(curl, CURLOPT_TIMEOUT_MS, configuration.totalTimeoutMilliseconds)
            _ = relay_curl_setopt_pointer(curl, CURLOPT_HTTPHEADER, UnsafeMutableRawPointer(headerList))
            if let body {
                _ = relay_curl_setopt_long(curl, CURLOPT_POST, 1)
                // COPYPOSTFIELDS copies the body (plain POSTFIELDS would not); its size goes first.
                _ = relay_curl_setopt_long(curl, CURLOPT_POSTFIELDSIZE, body.count)
                if body.isEmpty {
                    _ = relay_curl_setopt_string(curl, CURLOPT_COPYPOSTFIELDS, "")
                } else {
                    _ = body.withUnsafeBufferPointer { bytes in
                        relay_curl_setopt_pointer(curl, CURLOPT_COPYPOSTFIELDS, UnsafeMutableRawPointer(mutating: bytes.baseAddress!))
                    }
                }
            } else {
                _ = relay_curl_setopt_long(curl, CURLOPT_HTTPGET, 1)
            }
            _ = relay_curl_setopt_write_function(curl) { pointer, size, count, userdata in
                guard let pointer, let userdata else { return 0 }
                let sink = Unmanaged<Sink>.fromOpaque(userdata).takeUnretainedValue()
                let length = size * count
                // Returning less than given aborts the transfer: the body cap.
                guard sink.bytes.count + length <= sink.limit else { return 0 }
                sink.bytes.append(contentsOf: UnsafeRawBufferPointer(start: pointer, count: length))
                return length
            }
            _ = relay_curl_setopt_pointer(curl, CURLOPT_WRITEDATA, Unmanaged.passUnretained(sink).toOpaque())
            // Called about once a second even on an idle connection: a nonzero answer aborts.
            _ = relay_curl_setopt_long(curl, CURLOPT_NOPROGRESS, 0)
            _ = relay_curl_setopt_xferinfo_function(curl) { userdata, _, _, _, _ in
                guard let userdata else { return 0 }
                return Unmanaged<CancelFlag>.fromOpaque(userdata).takeUnretainedValue().isRaised ? 1 : 0
            }
            _ = relay_curl_setopt_pointer(curl, CURLOPT_XFERINFODATA, Unmanaged.passUnretained(cancelled).toOpaque())
            return curl_easy_perform(curl)
        }
        switch code {
        case CURLE_OK:
            var status = 0
            _ = relay_curl_getinfo_long(curl, CURLINFO_RESPONSE_CODE, &status)
            return .success(.init(status: status, body: sink.bytes))
        case CURLE_OPERATION_TIMEDOUT:
            return .failure(.timedOut)
        case CURLE_ABORTED_BY_CALLBACK where cancelled.isRaised:
            return .failure(.cancelled)
        default:
            return .failure(.transport(String(cString: curl_easy_strerror(code))))
        }
    }
}

/// Set once the task waiting for a transfer is cancelled; read by libcurl's progress callback.
private final class CancelFlag: Sendable {
    private let raised = Atomic(false)
    var isRaised: Bool { raised.load(ordering: .relaxed) }
    func raise() { raised.store(true, ordering: .relaxed) }
}

/// A counting semaphore with a bounded waiting line whose waiters give up at their deadline.
private final class Slots: Sendable {
    enum Outcome: Sendable {
        case acquired
        /// The waiting line is full.
        case full
        /// The deadline passed while waiting.
        case timedOut
    }

    private struct State {
        var inUse = 0
        var nextID = 0
        var waiting: Deque<(id: Int, continuation: CheckedContinuation<Outcome, Never>)> = []
    }

    private let state = Mutex(State())
    private let limit: Int
    private let maxWaiting: Int

    init(limit: Int, maxWaiting: Int) {
        self.limit = limit
        self.maxWaiting = maxWaiting
    }

    /// Waits for a slot until `deadline`; `.full` at once when the waiting line is full.
    func acquire(until deadline: ContinuousClock.Instant) async -> Outcome {
        if let immediate = state.withLock({ state in tryAcquire(&state, deadline: deadline) }) { return immediate }
        let id = state.withLock { state in
            defer { state.nextID += 1 }
            return state.nextID
        }
        // Only a call that has to wait gets a timer: an event loop's, a task of none.
        let giveUp = MultiThreadedEventLoopGroup.singleton.any().scheduleTask(in: TimeAmount(max(deadline - .now, .zero))) { [self] in
            let waiter = state.withLock { state -> CheckedContinuation<Outcome, Never>? in
                guard let index = state.waiting.firstIndex(where: { $0.id == id }) else { return nil }
                return state.waiting.remove(at: index).continuation
            }
            waiter?.resume(returning: .timedOut)
        }
        defer { giveUp.cancel() }
        return await withCheckedContinuation { continuation in
            let immediate: Outcome? = state.withLock { state in
                if let outcome = tryAcquire(&state, deadline: deadline) { return outcome }
                state.waiting.append((id, continuation))
                return nil
            }
            if let immediate { continuation.resume(returning: immediate) }
        }
    }

    /// A slot now, `.full` or `.timedOut` now, or nil: the caller must wait.
    private func tryAcquire(_ state: inout State, deadline: ContinuousClock.Instant) -> Outcome? {
        if state.inUse < limit {
            state.inUse += 1
            return .acquired
        }
        guard state.waiting.count < maxWaiting else { return .full }
        guard ContinuousClock.now < deadline else { return .timedOut }
        return nil
    }

    func release() {
        let next = state.withLock { state -> CheckedContinuation<Outcome, Never>? in
            // The slot passes straight to the next waiter, if any.
            if let next = state.waiting.popFirst() { return next.continuation }
            state.inUse -= 1
            return nil
        }
        next?.resume(returning: .acquired)
    }
}
