/// The shared store on PostgreSQL: a connection pool, the schema's migrations, and a deadline on every call.
import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Registry
import ServiceLifecycle
import Synchronization

/// The relay's store on PostgreSQL 15 (`RELAY_DATABASE_URL=postgres://...`), shared by every
/// node of a fleet: the registry, the audit log and the spent nonces here (`RelayRegistry`),
/// the same as the embedded SQLite store keeps for one node. Queries go through
/// postgres-nio's pool (`PostgresClient`), which must run (`run()`, a `Service`) while the store
/// is used; the pool reconnects by itself. Every call has a deadline (`callTimeout`): a
/// database that does not answer is an error the caller sees, never a wait without end.
public final class PostgresStore: Service, Sendable {
    let client: PostgresClient
    let logger: Logger
    /// The longest any one call may take.
    let callTimeout: Duration
    /// Where it is, for messages (the URL without its password).
    public let location: String
    /// The node this process is: the owner of the links it writes (a new id for every process).
    public let node: String
    /// The advisory lock this node holds while it lives (`FleetMembership`): PostgreSQL frees it
    /// the moment the node's connection ends, which is how the fleet sees a killed node.
    public let lockKey: Int64
    /// How often the node says it is alive; a node silent for 5 of these (or 2 without its lock)
    /// is declared dead by the others.
    public let heartbeat: Duration
    /// Where to open connections of its own (beside the pool's).
    let endpoint: Endpoint
    /// Set once the fleet declared this node dead (`FleetMembership`).
    private let fenced = Atomic<Bool>(false)
    /// Since when the node's own connection (`FleetMembership`) holds its lock without a break.
    private let connected = Mutex<ContinuousClock.Instant?>(nil)

    var connectedSince: ContinuousClock.Instant? {
        get { connected.withLock { $0 } }
        set { connected.withLock { $0 = newValue } }
    }

    struct Endpoint: Sendable {
        var host: String
        var port: Int
        var username: String
        var password: String?
        var database: String?
        var tls: TLSMode
    }

    /// The URL's `sslmode`, read once for the pool and for connections of its own.
    enum TLSMode: Sendable {
        case disable
        case prefer
        case require
    }

    /// A store for `url` (`postgres://user[:password]@host[:port]/database[?sslmode=disable|prefer|require]`);
    /// `role` names its connections (`application_name`, seen in `pg_stat_activity`).
    public init(
        url: String,
        role: String = "relay",
        node: String = PostgresStore.makeNodeID(),
        heartbeat: Duration = .seconds(1),
        callTimeout: Duration = .seconds(5),
        logger: Logger
    ) throws(StoreError) {
        let parsed = try Self.configuration(url)
        self.endpoint = parsed.endpoint
        var configuration = parsed.configuration
        configuration.options.additionalStartupParameters = [("application_name", role)]
        configuration.options.connectTimeout = .seconds(3)
        configuration.options.maximumConnections = 16
        self.client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        self.logger = logger
        self.callTimeout = callTimeout
        self.location = parsed.location
        self.node = node
        self.heartbeat = heartbeat
        self.lockKey = Int64.random(in: 1...(Int64.max >> 1))
    }

    /// A fresh node id: 32 hex digits (it names the node's notification channel).
    public static func makeNodeID() -> String {
        UUID().uuidString.lowercased().replacingOccurrences(of: "-", with: "")
    }

    /// From now on this process writes nothing: the fleet declared it dead and took its links.
    func fence() { fenced.store(true, ordering: .relaxed) }

    /// Whether the fleet declared this node dead.
    public var isFenced: Bool { fenced.load(ordering: .relaxed) }

    /// Throws once the node is fenced.
    func ensureNotFenced() throws(StoreError) {
        if isFenced { throw StoreError.unusable("this relay node was declared dead by the fleet at \(location): it writes nothing more") }
    }

    /// Inside a transaction: holds this node's row for the transaction, and fences the node if
    /// the fleet declared it dead (a reaper that takes its links waits for this transaction,
    /// or this transaction sees its verdict).
    func ensureServing(on connection: PostgresConnection) async throws {
        var serving = false
        for try await _ in try await connection.query(
            "SELECT 1 FROM relay_node WHERE node_id = \(node) AND state IN ('serving', 'draining') FOR SHARE",
            logger: logger
        ) {
            serving = true
        }
        if !serving {
            fence()
            try ensureNotFenced()
        }
    }

    /// Runs the pool until a graceful shutdown.
    public func run() async {
        await client.run()
    }

    /// Runs `body` with the store's pool running, then stops it (for commands).
    public func whileRunning<T: Sendable>(_ body: () async throws -> T) async throws -> T {
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask { await self.client.run() }
            defer { group.cancelAll() }
            return try await body()
        }
    }

    // MARK: Calls

    /// Runs `body` with a deadline; its failures become `StoreError`s naming the database.
    func call<T: Sendable>(_ what: String, within timeout: Duration? = nil, _ body: @escaping @Sendable () async throws -> T) async throws(StoreError) -> T {
        let timeout = timeout ?? callTimeout
        do {
            let location = location
            // The deadline does not wait for the call: a query on a connection the server has
            // just closed was seen to hang without end, ignoring cancellation (postgres-nio),
            // and a task group would wait for it. The call is cancelled and left behind: it is
            // an unstructured task because nothing may wait for it.
            return try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                let once = Once()
                let work = Task {
                    // After a restart of PostgreSQL the pool may still hold connections the
                    // server closed: the call goes again on another (a few times, within the
                    // deadline), rather than failing once per stale connection. A deadlock
                    // PostgreSQL broke by failing this call runs it again too.
                    var (lost, deadlocked) = (0, 0)
                    while true {
                        do {
                            let value = try await body()
                            if once.claim() { continuation.resume(returning: value) }
                            return
                        } catch where lost < 16 && !Task.isCancelled && Self.connectionWasLost(error) {
                            lost += 1
                        } catch where deadlocked < 3 && !Task.isCancelled && Self.mayRetry(error) {
                            deadlocked += 1
                        } catch {
                            if once.claim() { continuation.resume(throwing: error) }
                            return
                        }
                    }
                }
                // A timer on an event loop (not a task): it goes as soon as the call is answered
                // (thousands of calls a second must not leave as many sleeping timers behind).
                let deadline = PostgresClient.defaultEventLoopGroup.any().scheduleTask(in: TimeAmount(timeout)) {
                    guard once.claim() else { return }
                    work.cancel()
                    continuation.resume(throwing: StoreError.unusable("PostgreSQL at \(location) did not answer within \(timeout) (\(what))"))
                }
                once.keep(deadline)
            }
        } catch let error as StoreError {
            throw error
        } catch let error as PSQLError {
            throw StoreError.unusable("PostgreSQL at \(location): \(what): \(Self.describe(error))")
        } catch let error as PostgresTransactionError {
            let cause = (error.closureError as? PSQLError).map(Self.describe) ?? error.closureError.map { "\($0)" } ?? "\(error)"
            throw StoreError.unusable("PostgreSQL at \(location): \(what): \(cause)")
        } catch {
            throw StoreError.unusable("PostgreSQL at \(location): \(what): \(error)")
        }
    }

    /// One transaction, with a deadline.
    func transaction<T: Sendable>(
        _ what: String,
        within timeout: Duration? = nil,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws(StoreError) -> T {
        let logger = logger
        return try await call(what, within: timeout) {
            try await self.client.withTransaction(logger: logger) { connection in try await body(connection) }
        }
    }

    /// A statement or transaction PostgreSQL failed for a deadlock or a serialization conflict:
    /// nothing of it happened.
    static func mayRetry(_ error: any Error) -> Bool {
        let failure = (error as? PostgresTransactionError)?.closureError ?? error
        guard let state = (failure as? PSQLError)?.serverInfo?[.sqlState] else { return false }
        return state == "40P01" || state == "40001"
    }

    /// The call failed because its connection was gone (closed by a server that restarted,
    /// or cut): nothing of it happened, and another connection may serve it.
    static func connectionWasLost(_ error: any Error) -> Bool {
        let failure: PSQLError?
        if let transaction = error as? PostgresTransactionError {
            // Only a failed BEGIN: after it, what ran is unknown.
            failure = transaction.beginError as? PSQLError
        } else {
            failure = error as? PSQLError
        }
        guard let failure else { return false }
        if failure.code == .serverClosedConnection || failure.code == .clientClosedConnection || failure.code == .uncleanShutdown { return true }
        // 57P01-57P03: the server is shutting down, was shut down, or cannot connect now.
        return failure.serverInfo?[.sqlState]?.hasPrefix("57P") == true
    }

    static func describe(_ error: PSQLError) -> String {
        if let message = error.serverInfo?[.message] { return message }
        return "\(error.code)"
    }

    // MARK: The URL

    static func configuration(_ url: String) throws(StoreError) -> (configuration: PostgresClient.Configuration, location: String, endpoint: Endpoint) {
        guard let components = URLComponents(string: url), ["postgres", "postgresql"].contains(components.scheme ?? ""),
            let host = components.host, !host.isEmpty
        else {
            throw StoreError.unusable("RELAY_DATABASE_URL must look like postgres://user:password@host:5432/database")
        }
        let database = String(components.path.drop { $0 == "/" })
        let sslmode = components.queryItems?.first { $0.name == "sslmode" }?.value ?? "prefer"
        let mode: TLSMode
        switch sslmode {
        case "disable": mode = .disable
        case "prefer", "allow": mode = .prefer
        case "require", "verify-ca", "verify-full": mode = .require
        default: throw StoreError.unusable("RELAY_DATABASE_URL: sslmode must be disable, prefer or require (was \(sslmode))")
        }
        let tls: PostgresClient.Configuration.TLS
        switch mode {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(.makeClientConfiguration())
        case .require: tls = .require(.makeClientConfiguration())
        }
        let user = components.user.flatMap { $0.removingPercentEncoding } ?? "postgres"
        let port = components.port ?? 5432
        let configuration = PostgresClient.Configuration(
            host: host,
            port: port,
            username: user,
            password: components.password.flatMap { $0.removingPercentEncoding },
            database: database.isEmpty ? nil : database,
            tls: tls
        )
        let endpoint = Endpoint(
            host: host,
            port: port,
            username: user,
            password: configuration.password,
            database: configuration.database,
            tls: mode
        )
        return (configuration, "\(user)@\(host):\(port)/\(database)", endpoint)
    }
}

/// A flag the first of several racing tasks claims.
final class Once: Sendable {
    private let state = Mutex<(done: Bool, timer: Scheduled<Void>?)>((false, nil))

    /// True for the first caller only; the timer kept is cancelled then.
    func claim() -> Bool {
        let (first, timer) = state.withLock { state in
            defer { state = (true, nil) }
            return (!state.done, state.timer)
        }
        timer?.cancel()
        return first
    }

    /// A timer to cancel once claimed (at once if it was already).
    func keep(_ timer: Scheduled<Void>) {
        let done = state.withLock { state in
            if !state.done { state.timer = timer }
            return state.done
        }
        if done { timer.cancel() }
    }
}
