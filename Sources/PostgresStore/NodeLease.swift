/// This node's hold on the database: a lock on a connection of its own, kept across connection losses, or given up by stopping.
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Registry
import ServiceLifecycle
import Synchronization

/// One relay process serves a database at a time (for now): `relay serve` on PostgreSQL takes
/// over every live link and session it finds at start, so a second process on the same database
/// would take them from the first. The serving process holds an advisory lock on a connection
/// of its own (PostgreSQL releases it the moment that connection ends, a killed process's
/// included). This service keeps it: every `heartbeat` it checks the connection (with a
/// deadline); when the connection is gone (a PostgreSQL restart, a terminated backend, a network
/// cut) it connects again and takes the lock again. If another process took it meanwhile, this
/// node has lost the database: the store is fenced (it writes no live state any more, so nothing
/// stale overwrites the new holder's) and the service fails, which stops the relay.
public final class NodeLease: Service, Sendable {
    /// The advisory lock of the node that serves the database.
    public static let lock: Int64 = 0x7265_6C61_7900_0002

    let store: PostgresStore
    let heartbeat: Duration
    let logger: Logger
    private let connection = Mutex<PostgresConnection?>(nil)

    public init(store: PostgresStore, heartbeat: Duration = .seconds(1), logger: Logger) {
        self.store = store
        self.heartbeat = heartbeat
        self.logger = logger
    }

    /// Takes the lock before the node serves. A killed predecessor's lock goes when PostgreSQL
    /// notices its connection closed: this waits a few seconds for that rather than failing.
    public func acquire() async throws(StoreError) {
        for attempt in 0..<20 {
            if attempt > 0 { try? await Task.sleep(for: .milliseconds(250)) }
            if try await take() { return }
        }
        throw StoreError.unusable(
            "another relay serves the database at \(store.location); one relay process per database for now (several nodes are not built yet)"
        )
    }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.heartbeat) }
            guard !Task.isShuttingDownGracefully, !Task.isCancelled else { break }
            if await stillHeld() { continue }
            logger.warning("Lost the connection that holds this node's database lock; taking it again", metadata: ["store": "\(store.location)"])
            // Until the lock is back, nobody else may have it: keep trying while PostgreSQL is away.
            while !Task.isShuttingDownGracefully, !Task.isCancelled {
                do {
                    if try await take() {
                        logger.info("Holding this node's database lock again", metadata: ["store": "\(store.location)"])
                        break
                    }
                    store.fence()
                    logger.critical(
                        "Another relay took the database while this one was cut off from it; stopping without writing anything more",
                        metadata: ["store": "\(store.location)"]
                    )
                    throw StoreError.unusable("another relay took the database at \(store.location) while this one was cut off from it")
                } catch let error as StoreError where error.kind == .unusable && !store.isFenced {
                    // PostgreSQL is not back yet.
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.heartbeat) }
                }
            }
        }
        await release()
    }

    /// Releases the lock and closes its connection.
    public func release() async {
        let connection = connection.withLock { connection in
            defer { connection = nil }
            return connection
        }
        try? await connection?.close()
    }

    /// Whether the lock's connection still answers.
    private func stillHeld() async -> Bool {
        guard let connection = connection.withLock({ $0 }), !connection.isClosed else { return false }
        do {
            _ = try await store.call("checking the node lock") { try await connection.query("SELECT 1", logger: self.logger).collect() }
            return true
        } catch {
            _ = connection.close() as EventLoopFuture<Void>
            return false
        }
    }

    /// A fresh connection, and the lock on it if it is free; false when another process holds it.
    private func take() async throws(StoreError) -> Bool {
        let fresh = try await store.call("connecting for the node lock") { try await self.store.connect(as: "relay-node-\(self.store.node)") }
        let taken = try await store.call("taking the node lock") { () async throws -> Bool in
            var taken = false
            for try await value in try await fresh.query("SELECT pg_try_advisory_lock(\(Self.lock))", logger: self.logger).decode(Bool.self) {
                taken = value
            }
            return taken
        }
        guard taken else {
            try? await fresh.close()
            return false
        }
        let replaced = connection.withLock { connection in
            defer { connection = fresh }
            return connection
        }
        try? await replaced?.close()
        return true
    }
}

extension PostgresStore {
    /// A connection of its own (beside the pool's), named `application_name` in
    /// `pg_stat_activity`.
    func connect(as name: String) async throws -> PostgresConnection {
        let tls: PostgresConnection.Configuration.TLS
        switch endpoint.tls {
        case .disable: tls = .disable
        case .prefer: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
        case .require: tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
        }
        var configuration = PostgresConnection.Configuration(
            host: endpoint.host,
            port: endpoint.port,
            username: endpoint.username,
            password: endpoint.password,
            database: endpoint.database,
            tls: tls
        )
        configuration.options.connectTimeout = .seconds(3)
        configuration.options.additionalStartupParameters = [("application_name", name)]
        return try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
    }
}
