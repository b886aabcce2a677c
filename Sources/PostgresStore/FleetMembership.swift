/// This node's place in the fleet: its row, its lock and heartbeat on a connection of its own, and the doorbell other nodes ring.
import Foundation
import Logging
import NIOCore
import NIOSSL
import PostgresNIO
import Registry
import ServiceLifecycle
import Synchronization

/// A node of a fleet on PostgreSQL (contract §11). At start it writes its row (`relay_node`)
/// and opens a connection of its own on which it holds its advisory lock (PostgreSQL frees it
/// the moment the connection ends, a killed process's included: the fleet's fast sign of a
/// death), beats every `heartbeat` (the slow sign: 5 beats of silence) and listens on its
/// channel, where other nodes ring when they queue messages for its links (`doorbell`).
///
/// When the connection is lost (a PostgreSQL restart, a terminated backend, a network cut) it
/// connects again, takes its lock again and rings its own doorbell (whatever was rung meanwhile
/// is read). If the fleet declared the node dead meanwhile (its lock was taken, or its row says
/// so), the node has lost its links to another: the store is fenced (it writes nothing more)
/// and the service fails, which stops the relay; a supervisor starts a new incarnation.
public final class FleetMembership: Service, Sendable {
    let store: PostgresStore
    let address: String
    /// Rung when another node queued messages for this node's links.
    public let doorbell = Doorbell()
    /// Rung with a device id when that device's presence may have changed anywhere in the
    /// fleet, and with `*` when anything may have (after the node listens again).
    public let presence = Doorbell()
    let logger: Logger
    private let connection = Mutex<PostgresConnection?>(nil)

    public init(store: PostgresStore, address: String, logger: Logger) {
        self.store = store
        self.address = address
        self.logger = logger
    }

    var channel: String { "relay_node_\(store.node)" }

    /// Takes the node's lock and then writes its row, before the node serves (a row without
    /// its lock held would look like a node that died).
    public func join() async throws(StoreError) {
        guard try await connect(joining: true) else { throw StoreError.unusable("this node's lock is taken at \(store.location)") }
    }

    public func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.listen() }
            defer { group.cancelAll() }
            do {
                try await beat()
            } catch {
                group.cancelAll()
                self.failure.withLock { $0 = error }
            }
        }
        if let failure = failure.withLock({ $0 }) { throw failure }
        await leave()
    }

    private let failure = Mutex<(any Error)?>(nil)

    /// Beats until a graceful shutdown; takes the lock again after a loss.
    private func beat() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            // A beat every `heartbeat`, or at once when the connection is seen gone: the lock
            // is to be held again well within the two beats after which others may judge.
            let next = ContinuousClock.now + store.heartbeat
            while ContinuousClock.now < next, connection.withLock({ $0?.isClosed == false }), !Task.isShuttingDownGracefully {
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: min(.milliseconds(50), self.store.heartbeat)) }
            }
            guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return }
            if try await beatOnce() { continue }
            logger.warning("Lost this node's connection to the fleet's database; connecting again", metadata: ["store": "\(store.location)"])
            while !Task.isShuttingDownGracefully, !Task.isCancelled {
                do {
                    if try await connect() {
                        logger.info("Connected to the fleet's database again", metadata: ["store": "\(store.location)"])
                        break
                    }
                    throw declaredDead()
                } catch let error as StoreError where error.kind == .unusable && !store.isFenced {
                    // PostgreSQL is not back yet.
                    try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.store.heartbeat) }
                }
            }
        }
    }

    private func declaredDead() -> StoreError {
        store.fence()
        logger.critical(
            "The fleet declared this node dead while it was cut off or paused, and took its links; stopping without writing anything more",
            metadata: ["store": "\(store.location)", "node": "\(store.node)"]
        )
        // The relay stops as the service fails; a node that lost its links must not linger
        // serving sockets it no longer owns if that takes long: it ends (status 75, "try
        // again": a supervisor starts a new incarnation) after a short grace at the latest.
        // Unstructured on purpose: a watchdog must outlive the service group it stops, and
        // whatever in it may hang.
        Task.detached {
            try? await Task.sleep(for: .seconds(3))
            exit(75)
        }
        return StoreError.unusable("the fleet declared this node dead at \(store.location) and took its links over")
    }

    /// One heartbeat on the node's connection: true when it went through, false when the
    /// connection is gone. Throws when the fleet declared the node dead.
    private func beatOnce() async throws -> Bool {
        guard let connection = connection.withLock({ $0 }), !connection.isClosed else {
            store.connectedSince = nil
            return false
        }
        let alive: Bool
        do {
            alive = try await store.call("beating") {
                try await !connection.query(
                    "UPDATE relay_node SET heartbeat_at = now() WHERE node_id = \(self.store.node) AND state IN ('serving', 'draining') RETURNING 1",
                    logger: self.logger
                ).collect().isEmpty
            }
        } catch {
            store.connectedSince = nil
            _ = connection.close() as EventLoopFuture<Void>
            return false
        }
        guard alive else { throw declaredDead() }
        return true
    }

    /// Listens for the doorbell on the current connection, again on each new one.
    private func listen() async {
        var listening: ObjectIdentifier?
        while !Task.isCancelled {
            guard let connection = connection.withLock({ $0 }), !connection.isClosed, ObjectIdentifier(connection) != listening else {
                try? await Task.sleep(for: .milliseconds(50))
                continue
            }
            listening = ObjectIdentifier(connection)
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    try? await connection.listen(on: self.channel) { notifications in
                        // Listening now: whatever was rung before is read once.
                        self.doorbell.ring()
                        for try await _ in notifications { self.doorbell.ring() }
                    }
                }
                group.addTask {
                    try? await connection.listen(on: "relay_fleet") { notifications in
                        self.presence.ring("*")
                        for try await notification in notifications { self.presence.ring(notification.payload) }
                    }
                }
                // Both end when the connection is gone; the heartbeat connects again.
                await group.waitForAll()
            }
        }
    }

    /// A fresh connection holding the node's lock, unless the fleet declared the node dead:
    /// false then (its lock is taken, or its row says so).
    private func connect(joining: Bool = false) async throws(StoreError) -> Bool {
        let fresh = try await store.call("connecting as a node") { try await self.store.connect(as: "relay-node-\(self.store.node)") }
        let alive = try await store.call("taking the node's lock") { () async throws -> Bool in
            var taken = false
            for try await value in try await fresh.query("SELECT pg_try_advisory_lock(\(self.store.lockKey))", logger: self.logger).decode(Bool.self) {
                taken = value
            }
            guard taken else { return false }
            if joining {
                try await fresh.query(
                    """
                    INSERT INTO relay_node (node_id, address, state, lock_key)
                    VALUES (\(self.store.node), \(self.address), 'serving', \(self.store.lockKey))
                    """,
                    logger: self.logger
                )
                return true
            }
            return try await !fresh.query(
                "UPDATE relay_node SET heartbeat_at = now() WHERE node_id = \(self.store.node) AND state IN ('serving', 'draining') RETURNING 1",
                logger: self.logger
            ).collect().isEmpty
        }
        guard alive else {
            try? await fresh.close()
            return false
        }
        let replaced = connection.withLock { connection in
            defer { connection = fresh }
            return connection
        }
        try? await replaced?.close()
        store.connectedSince = .now
        doorbell.ring()
        return true
    }

    /// A graceful stop: the node says so (the others take its links over at once) and lets
    /// its lock go.
    public func leave() async {
        if !store.isFenced {
            _ = try? await store.call("leaving the fleet") {
                try await self.store.client.query("UPDATE relay_node SET state = 'stopped' WHERE node_id = \(self.store.node)", logger: self.logger)
                    .collect()
            }
        }
        let connection = connection.withLock { connection in
            defer { connection = nil }
            return connection
        }
        try? await connection?.close()
    }
}

/// What to do when a bell rings, with what it says (set once the listener exists).
public final class Doorbell: Sendable {
    private let action = Mutex<(@Sendable (String) -> Void)?>(nil)

    public func set(_ action: @escaping @Sendable (String) -> Void) {
        self.action.withLock { $0 = action }
    }

    public func ring(_ payload: String = "") {
        action.withLock { $0 }?(payload)
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
