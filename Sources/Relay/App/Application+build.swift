/// Builds the relay from its configuration: store, TURN provider, switchboard, routes, server and services.
import DeviceAuth
import Foundation
import Hummingbird
import HummingbirdCore
import Logging
import OpenSSLCrypto
import PostgresStore
import Registry
import RelayCore
import RelayWebSocket
import ServiceLifecycle
import UnixSignals
import TURNBroker

/// What the application is built from besides its configuration: the parts tests and other
/// deployments may swap.
public struct RelayDependencies: Sendable {
    /// Replaces the provider the configuration names.
    public var turn: (any TURNProvider)?
    /// When to refresh a session's ICE servers, given their ttl in seconds (contract: at 80 %).
    public var refreshDelay: @Sendable (Int) -> Duration

    public init(
        turn: (any TURNProvider)? = nil,
        refreshDelay: @escaping @Sendable (Int) -> Duration = { .milliseconds($0 * 800) }
    ) {
        self.turn = turn
        self.refreshDelay = refreshDelay
    }
}

/// Builds the relay application on the embedded store (tests run it as is). A node of a
/// PostgreSQL fleet runs with `runRelay`, which keeps the database's pool running around it.
public func buildApplication(
    configuration: RelayConfiguration,
    dependencies: RelayDependencies = .init(),
    logger: Logger = Logger(label: "relay")
) async throws(StoreError) -> some ApplicationProtocol {
    guard configuration.databaseURL == nil else {
        throw StoreError.unusable("an application built in-process runs on the embedded store; a PostgreSQL node runs with runRelay")
    }
    return try await buildRelay(configuration: configuration, stores: .embedded(configuration), dependencies: dependencies, logger: logger).application
}

/// Runs the relay until SIGTERM or SIGINT stops it and its drain is over (`relay serve`): its
/// stores around everything, then its services, the drain (`go_away`, 1001) stopping first.
public func runRelay(configuration: RelayConfiguration, logger: Logger) async throws {
    try await RelayStores.withStores(configuration, logger: logger) { stores in
        let relay = try await buildRelay(configuration: configuration, stores: stores, logger: logger)
        let services = ServiceGroup(
            configuration: .init(
                services: [.init(service: relay.application), .init(service: relay.shutdown)],
                gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger
            )
        )
        try await services.run()
    }
}

/// Builds the relay on `stores`: its routes, authentication, the switchboard and the server,
/// and the service that drains links on shutdown. Only wiring: each part is made by its own
/// type from its part of the configuration.
func buildRelay(
    configuration: RelayConfiguration,
    stores: RelayStores,
    dependencies: RelayDependencies = .init(),
    logger: Logger
) async throws(StoreError) -> (application: some ApplicationProtocol, shutdown: ShutdownService) {
    let ring = configuration.jwksURL.map { _ in KeyRing() }
    let verifier = AppTokenVerifier(configuration: configuration.tokens, keyRing: ring)
    let metrics = RelayMetrics()
    let journals = RelayJournals(configuration: configuration, stores: stores, logger: logger)
    let nonces = try await journals.nonceCache(configuration: configuration, ledger: stores.nonces)
    let configured = dependencies.turn.map { ($0, [any Service]()) } ?? configuration.turnProvider(metrics: metrics, logger: logger)
    let turn = ObservedTURNProvider(configured.0, probeEvery: .seconds(configuration.turnProbeSeconds), factory: metrics.metricsFactory)
    let errands = Errands()
    let switchboard = Switchboard(
        table: journals.table,
        turn: turn,
        directory: stores.registry,
        tokens: verifier,
        limits: .init(configuration),
        journal: journals.audit,
        liveState: journals.liveState,
        metrics: metrics,
        refreshDelay: dependencies.refreshDelay,
        errands: errands,
        logger: logger
    )
    try await journals.takeOver(into: switchboard)
    let jwks = await configuration.jwksSource(into: ring, logger: logger)
    let authenticator = ClientAuthenticator(
        tokens: verifier,
        devices: DeviceAuthenticator(
            directory: stores.registry,
            masterKey: configuration.deviceMasterKey,
            windowSeconds: configuration.deviceSignatureWindowSeconds,
            nonces: nonces,
            ledger: stores.nonces
        ),
        metrics: metrics,
        jwks: jwks?.source
    )
    let admission = ClientAdmission(
        authenticator: authenticator,
        attempts: configuration.connectionAttempts,
        failures: configuration.authenticationFailures
    )
    let connection = LinkConnection(
        switchboard: switchboard,
        heartbeatMilliseconds: configuration.heartbeatSeconds * 1000,
        resumeGraceMilliseconds: configuration.resumeGraceSeconds * 1000
    )
    let router = relayRouter(
        configuration: configuration, stores: stores, journals: journals, switchboard: switchboard, turn: turn, metrics: metrics,
        authenticator: authenticator, admission: admission, connection: connection
    )
    let sockets = OpenSockets()
    // In the order they start; they stop in the reverse order (the stores' own last, after the last write).
    // The errands stop after the server and the drain, before the TURN provider and the journals.
    var services: [any Service] = stores.services + journals.services + configured.1 + [turn, errands]
    services += stores.fleetServices(switchboard: switchboard, configuration: configuration, logger: logger)
    services += jwks?.services ?? []
    services += journals.periodicServices(configuration: configuration, switchboard: switchboard) + [sockets]
    let keyFiles = configuration.publicKeyFiles.isEmpty ? nil : (files: configuration.publicKeyFiles, keys: verifier.publicKeys)
    services.append(HangupReloader(tls: configuration.tls, keyFiles: keyFiles, jwks: jwks?.source, logger: logger))
    let application = Application(
        router: router,
        server: RelayServer.builder(
            configuration: configuration,
            gate: LinkUpgradeGate.gate(switchboard: switchboard, admission: admission, connection: connection),
            sockets: sockets,
            metrics: metrics
        ),
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "relay"),
        services: services,
        onServerRunning: { _ in SystemdNotification.send("READY=1\nSTATUS=listening") },
        logger: logger
    )
    return (application, ShutdownService(switchboard: switchboard, drain: .seconds(configuration.shutdownDrainSeconds)))
}

/// Every HTTP route of the relay (the WebSocket upgrades are the server channel's: `LinkUpgradeGate`).
private func relayRouter(
    configuration: RelayConfiguration,
    stores: RelayStores,
    journals: RelayJournals,
    switchboard: Switchboard,
    turn: ObservedTURNProvider,
    metrics: RelayMetrics,
    authenticator: ClientAuthenticator,
    admission: ClientAdmission,
    connection: LinkConnection
) -> Router<RelayRequestContext> {
    let router = Router(context: RelayRequestContext.self)
    router.addRoutes(
        ProbeRoutes(
            switchboard: switchboard, store: stores.registry, journal: journals.audit, liveState: journals.liveState, turn: turn,
            metrics: metrics, metricsToken: configuration.metricsToken
        ).routes
    )
    router.addRoutes(
        HTTPLinkRoutes(
            switchboard: switchboard, admission: admission, connection: connection,
            maxMessageBytes: configuration.maxMessageBytes, keepalive: .seconds(configuration.sseKeepaliveSeconds)
        ).routes
    )
    router.addRoutes(BrowserFiles.routes)
    router.addRoutes(DevicesRoute(authenticator: authenticator, store: stores.registry, switchboard: switchboard).routes)
    if let adminToken = configuration.adminToken {
        router.addRoutes(AdminRoutes(token: adminToken, store: stores.registry, switchboard: switchboard).routes, atPath: "/admin")
    }
    let turnRequests = RateLimiter(capacity: configuration.turnRatePerMinute, perSecond: Double(configuration.turnRatePerMinute) / 60)
    router.addRoutes(
        TURNCredentialsRoute(
            authenticator: authenticator,
            turn: turn,
            limiter: stores.limit(turnRequests, name: "turn_credentials")
        ).routes
    )
    router.addRoutes(LinkUpgradeGate.plainRequests)
    return router
}
