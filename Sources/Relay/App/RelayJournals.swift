/// What the relay writes behind, in batches: the audit, the live state, the fleet's outbox.
import DeviceAuth
import Foundation
import Logging
import Registry
import ServiceLifecycle

/// The writers behind the switchboard: audit events, device sightings and spent nonces in
/// batches (`RELAY_AUDIT_FLUSH_MS`), the live links and sessions for the next process
/// (`RELAY_OUTBOX_FLUSH_MS`), and in a fleet the messages bound for other nodes; with the table
/// of this node's links and sessions they describe.
struct RelayJournals: Sendable {
    let table: any SessionTable
    let audit: StoreWriter
    let liveState: LiveStateJournal
    private let stores: RelayStores
    private let logger: Logger

    init(configuration: RelayConfiguration, stores: RelayStores, logger: Logger) {
        let table = stores.table
        self.table = table
        self.audit = StoreWriter(store: stores.registry, interval: .milliseconds(configuration.auditFlushMilliseconds), logger: logger)
        self.liveState = LiveStateJournal(
            store: stores.live,
            interval: .milliseconds(configuration.outboxFlushMilliseconds),
            links: { table.allLinks },
            settled: { [outbox = stores.fleet?.outbox] in await outbox?.written() },
            logger: logger
        )
        self.stores = stores
        self.logger = logger
    }

    /// In the order they start (they stop in the reverse order).
    var services: [any Service] { [audit, liveState] + (stores.fleet.map { [$0.outbox] } ?? []) }

    /// The device nonces: spent ones go to the store with the audit batches (in a fleet, the
    /// ledger spends each in the shared store at once instead); those a previous run spent stay spent.
    func nonceCache(configuration: RelayConfiguration, ledger: (any NonceLedger)?) async throws(StoreError) -> NonceCache {
        let nonces = NonceCache(perDevice: configuration.deviceConnectsPerWindow) { [audit] deviceID, nonce, expiresAt in
            if ledger == nil { audit.record(.nonceSpent(deviceID: deviceID, nonce: nonce, expiresAt: expiresAt)) }
        }
        nonces.remember(try await stores.registry.liveNonces(now: Int(Date().timeIntervalSince1970)))
        return nonces
    }

    /// Takes over what the previous process left live, before anything is served; audits what
    /// it left open without keeping it as `relay_stopped`.
    func takeOver(into switchboard: Switchboard) async throws(StoreError) {
        let restored = switchboard.restore(try await stores.live.liveState())
        if restored.links > 0 {
            logger.info("Took over the links and sessions the previous run left", metadata: ["links": "\(restored.links)", "sessions": "\(restored.sessions)"])
        }
        let left = try await stores.live.closeSessionsLeftOpen()
        if left > 0 {
            logger.warning("The previous run stopped without keeping some sessions; audited them as relay_stopped", metadata: ["sessions": "\(left)"])
        }
    }

    /// Housekeeping on timers: the audit's retention (`RELAY_AUDIT_RETENTION_DAYS`) and the
    /// registry's revocations, which end the links of revoked devices.
    func periodicServices(configuration: RelayConfiguration, switchboard: Switchboard) -> [any Service] {
        var services: [any Service] = []
        if let days = configuration.auditRetentionDays {
            services.append(AuditRetention(store: stores.registry, days: days, interval: .seconds(3600), logger: logger))
        }
        let poll = Duration.milliseconds(configuration.registryPollMilliseconds)
        services.append(RevocationWatcher(store: stores.registry, switchboard: switchboard, interval: poll, logger: logger))
        return services
    }
}
