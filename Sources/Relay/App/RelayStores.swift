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
    /// Stops what runs beside the services.
    let close: @Sendable () async -> Void

    static func open(_ configuration: RelayConfiguration, logger: Logger) async throws(StoreError) -> RelayStores {
        guard let url = configuration.databaseURL else {
            let store = try RelayStore(path: configuration.databasePath)
            return RelayStores(registry: store, live: store, membership: nil, table: LocalSessionTable(), fleet: nil, nonces: nil, close: {})
        }
        let store = try PostgresStore(url: url, role: "relay", heartbeat: .milliseconds(configuration.nodeHeartbeatMilliseconds), logger: logger)
        // The pool runs from here until `close`: building reads the store already.
        let pool = Task { await store.run() }
        let membership = FleetMembership(store: store, address: "\(configuration.host):\(configuration.port)", logger: logger)
        do throws(StoreError) {
            try await store.migrate()
            try await membership.join()
        } catch {
            pool.cancel()
            throw error
        }
        logger.info("Using PostgreSQL", metadata: ["store": "\(store.location)", "node": "\(store.node)"])
        let fleet = FleetSessionTable(store: store, outbox: FleetOutbox(store: store, logger: logger))
        return RelayStores(
            registry: store,
            live: store,
            membership: membership,
            table: fleet,
            fleet: fleet,
            nonces: store
        ) {
            await membership.leave()
            pool.cancel()
            // The pool stops at once unless it is connecting to a database that is away: then
            // the process does not wait for it.
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await pool.value }
                group.addTask { try? await Task.sleep(for: .seconds(3)) }
                await group.next()
                group.cancelAll()
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
