/// The stores a relay runs on, chosen once from the configuration: SQLite, or PostgreSQL for a fleet.
import DeviceAuth
import Logging
import PostgresStore
import Registry
import ServiceLifecycle

/// The stores a relay runs on: the embedded SQLite file, or with `RELAY_DATABASE_URL` PostgreSQL,
/// where every relay on the database is a node of one fleet.
struct RelayStores: Sendable {
    let registry: any RelayRegistry
    let live: any LiveStateStore
    /// This node's place in the fleet (a service: it keeps it, or stops the relay).
    var membership: FleetMembership?
    /// The table of links and sessions, its rules this process's alone or the fleet's.
    let table: any SessionTable
    /// This node's part in the fleet (nil: it runs alone).
    var fleet: FleetSessionTable?
    /// Device nonces spent anywhere in the fleet.
    var nonces: (any NonceLedger)?

    /// The embedded store alone (SQLite at `RELAY_DB`).
    static func embedded(_ configuration: RelayConfiguration) throws(StoreError) -> RelayStores {
        let store = try RelayStore(path: configuration.databasePath)
        return RelayStores(registry: store, live: store, membership: nil, table: LocalSessionTable(), fleet: nil, nonces: nil)
    }

    /// Runs `body` on the stores the configuration names: the embedded store, or PostgreSQL,
    /// whose pool runs as a child task for exactly as long as `body` (building the relay reads
    /// the store before any service runs, and the services write to it until the last one
    /// stopped); this node joins the fleet first and leaves it last. When `body` ends, the
    /// pool stops: at once, or within its connect timeout (3 s) if PostgreSQL is away.
    static func withStores<T: Sendable>(
        _ configuration: RelayConfiguration,
        logger: Logger,
        _ body: (RelayStores) async throws -> T
    ) async throws -> T {
        guard let url = configuration.databaseURL else { return try await body(embedded(configuration)) }
        let store = try PostgresStore(url: url, role: "relay", heartbeat: .milliseconds(configuration.nodeHeartbeatMilliseconds), logger: logger)
        return try await store.whileRunning {
            let membership = FleetMembership(store: store, address: "\(configuration.host):\(configuration.port)", logger: logger)
            try await store.migrate()
            try await membership.join()
            logger.info("Using PostgreSQL", metadata: ["store": "\(store.location)", "node": "\(store.node)"])
            let fleet = FleetSessionTable(store: store, outbox: FleetOutbox(store: store, logger: logger))
            let stores = RelayStores(registry: store, live: store, membership: membership, table: fleet, fleet: fleet, nonces: store)
            do {
                let result = try await body(stores)
                await membership.leave()
                return result
            } catch {
                await membership.leave()
                throw error
            }
        }
    }

    /// The stores' own services, first to start and last to stop (after the last write): this
    /// node's fleet membership.
    var services: [any Service] { membership.map { [$0] } ?? [] }

    /// In a fleet, the service that carries messages and presence between this node and the others.
    func fleetServices(switchboard: Switchboard, configuration: RelayConfiguration, logger: Logger) -> [any Service] {
        guard let fleet, let membership else { return [] }
        let service = FleetService(node: fleet, switchboard: switchboard, heartbeat: .milliseconds(configuration.nodeHeartbeatMilliseconds), logger: logger)
        membership.doorbell.set { _ in service.ring() }
        membership.presence.set { service.presenceChanged($0) }
        return [service]
    }

    /// A per-key limit over `local`'s capacity: in a fleet, held fleet-wide in the shared store.
    func limit(_ local: RateLimiter, name: String) -> any KeyedLimit {
        guard let fleet else { return local }
        return FleetWideLimiter(local: local, store: fleet.store, name: name)
    }
}
