/// One relay process serves a database at a time (for now): a lock held on a connection of its own.
import Logging
import NIOSSL
import PostgresNIO
import Registry
import Synchronization

extension PostgresStore {
    /// The advisory lock of the node that serves the database.
    static let soleNodeLock: Int64 = 0x7265_6C61_7900_0002

    /// Takes the database's node lock on a connection of its own and holds it while this
    /// process serves: `relay serve` on PostgreSQL takes over every live link and session it
    /// finds, so a second process on the same database would take them from the first. (Several
    /// nodes sharing one database, each owning its own links, are not built yet; a second
    /// `relay serve` is refused with this message instead.)
    public func claimSoleNode() async throws(StoreError) {
        let endpoint = endpoint
        let connection = try await call("taking the node lock") { () async throws -> PostgresConnection in
            let tls: PostgresConnection.Configuration.TLS
            switch endpoint.sslmode {
            case "disable": tls = .disable
            case "require", "verify-ca", "verify-full": tls = .require(try NIOSSLContext(configuration: .makeClientConfiguration()))
            default: tls = .prefer(try NIOSSLContext(configuration: .makeClientConfiguration()))
            }
            var configuration = PostgresConnection.Configuration(
                host: endpoint.host,
                port: endpoint.port,
                username: endpoint.username,
                password: endpoint.password,
                database: endpoint.database,
                tls: tls
            )
            configuration.options.additionalStartupParameters = [("application_name", "relay-node-\(self.node)")]
            return try await PostgresConnection.connect(configuration: configuration, id: 1, logger: self.logger)
        }
        // A killed predecessor's lock goes when PostgreSQL notices its connection closed: a
        // restart right after a kill waits a few seconds for that rather than failing.
        var taken = false
        for attempt in 0..<20 where !taken {
            if attempt > 0 { try? await Task.sleep(for: .milliseconds(250)) }
            taken = try await call("taking the node lock") { () async throws -> Bool in
                var taken = false
                for try await value in try await connection.query("SELECT pg_try_advisory_lock(\(Self.soleNodeLock))", logger: self.logger).decode(Bool.self) {
                    taken = value
                }
                return taken
            }
        }
        guard taken else {
            try? await connection.close()
            throw StoreError.unusable(
                "another relay serves the database at \(location); one relay process per database for now (several nodes are not built yet)"
            )
        }
        lockConnection.withLock { $0 = connection }
    }

    /// Releases the node lock and closes its connection.
    public func releaseNode() async {
        let connection = lockConnection.withLock { connection in
            defer { connection = nil }
            return connection
        }
        try? await connection?.close()
    }
}
