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

/// Builds the relay application (tests run it as is).
public func buildApplication(
    configuration: RelayConfiguration,
    dependencies: RelayDependencies = .init(),
    logger: Logger = Logger(label: "relay")
) async throws(StoreError) -> some ApplicationProtocol {
    try await buildRelay(configuration: configuration, dependencies: dependencies, logger: logger).application
}

/// Builds the relay: its stores, routes, authentication, the switchboard and the server, the
/// service that drains links on shutdown, and what to stop once every service has stopped (the
/// PostgreSQL pool, which the services use until their last write).
public func buildRelay(
    configuration: RelayConfiguration,
    dependencies: RelayDependencies = .init(),
    logger: Logger = Logger(label: "relay")
) async throws(StoreError) -> (application: some ApplicationProtocol, shutdown: ShutdownService, close: @Sendable () async -> Void) {
    let ring = configuration.jwksURL.map { _ in KeyRing() }
    let verifier = AppTokenVerifier(configuration: configuration.tokens, keyRing: ring)
    let metrics = RelayMetrics()
    let stores = try await RelayStores.open(configuration, logger: logger)
    let store = stores.registry
    let journal = StoreWriter(store: store, interval: .milliseconds(configuration.auditFlushMilliseconds), logger: logger)
    let table = LocalSessionTable(fleet: stores.fleet)
    let liveState = LiveStateJournal(
        store: stores.live,
        interval: .milliseconds(configuration.outboxFlushMilliseconds),
        links: { table.allLinks },
        settled: { [outbox = stores.fleet?.outbox] in await outbox?.written() },
        logger: logger
    )
    // Spent nonces go to the store with the audit batches (in a fleet, the ledger spends each
    // in the shared store at once instead); those a previous run spent stay spent.
    let ledger = stores.nonces
    let nonces = NonceCache(perDevice: configuration.deviceConnectsPerWindow) { deviceID, nonce, expiresAt in
        if ledger == nil { journal.record(.nonceSpent(deviceID: deviceID, nonce: nonce, expiresAt: expiresAt)) }
    }
    nonces.remember(try await store.liveNonces(now: Int(Date().timeIntervalSince1970)))
    // The fleet membership first: it is the last to stop, after the last write.
    var services: [any Service] = (stores.membership.map { [$0] } ?? []) + [journal, liveState] + (stores.fleet.map { [$0.outbox] } ?? [])
    let configured: any TURNProvider
    if let provided = dependencies.turn {
        configured = provided
    } else {
        switch configuration.turn {
        case .staticSTUN:
            configured = StaticProvider(stunURIs: configuration.stunURIs)
        case .cloudflare(let settings, let connectTimeout, let timeout):
            var curl = CurlClient.Configuration()
            curl.connectTimeoutMilliseconds = connectTimeout
            curl.totalTimeoutMilliseconds = timeout
            curl.allowPlainHTTP = RelayConfiguration.isLoopbackHTTP(settings.baseURL)
            let client = CurlClient(configuration: curl)
            services.append(CurlClientService(client: client))
            configured = CloudflareProvider(configuration: settings, client: client, logger: logger, metrics: metrics.metricsFactory)
        case .coturn(let secret, let uris):
            configured = CoturnProvider(sharedSecret: secret, turnURIs: uris, stunURIs: configuration.stunURIs)
        }
    }
    let turn = ObservedTURNProvider(configured, probeEvery: .seconds(configuration.turnProbeSeconds), factory: metrics.metricsFactory)
    services.append(turn)
    let switchboard = Switchboard(
        table: table,
        turn: turn,
        directory: store,
        tokens: verifier,
        limits: .init(
            maxSessionsPerDevice: configuration.maxSessionsPerDevice,
            maxSessionsPerApp: configuration.maxSessionsPerApp,
            keptMessages: configuration.resumeBufferMessages,
            keptBytes: configuration.resumeBufferBytes,
            rateBurst: configuration.rateBurst,
            ratePerSecond: configuration.ratePerSecond,
            maxRefusedInARow: 100,
            resumeGrace: .seconds(configuration.resumeGraceSeconds),
            setupTimeout: .seconds(configuration.setupTimeoutSeconds),
            tokenLeeway: configuration.tokens.leewaySeconds
        ),
        journal: journal,
        liveState: liveState,
        metrics: metrics,
        refreshDelay: dependencies.refreshDelay,
        logger: logger
    )
    // What the previous process left live is taken over before anything is served.
    let restored = switchboard.restore(try await stores.live.liveState())
    if restored.links > 0 {
        logger.info("Took over the links and sessions the previous run left", metadata: ["links": "\(restored.links)", "sessions": "\(restored.sessions)"])
    }
    let left = try await stores.live.closeSessionsLeftOpen()
    if left > 0 {
        logger.warning("The previous run stopped without keeping some sessions; audited them as relay_stopped", metadata: ["sessions": "\(left)"])
    }
    if let fleet = stores.fleet, let membership = stores.membership {
        let service = FleetService(
            fleet: fleet,
            switchboard: switchboard,
            heartbeat: .milliseconds(configuration.nodeHeartbeatMilliseconds),
            logger: logger
        )
        membership.doorbell.set { _ in service.ring() }
        membership.presence.set { service.presenceChanged($0) }
        services.append(service)
    }
    let connection = LinkConnection(
        switchboard: switchboard,
        heartbeatMilliseconds: configuration.heartbeatSeconds * 1000,
        resumeGraceMilliseconds: configuration.resumeGraceSeconds * 1000
    )
    let connectionAttempts = RateLimiter(
        capacity: configuration.connectBurst,
        perSecond: Double(configuration.connectRatePerMinute) / 60
    )
    var jwks: JWKSSource?
    if let url = configuration.jwksURL, let ring {
        var curl = CurlClient.Configuration()
        curl.allowPlainHTTP = RelayConfiguration.isLoopbackHTTP(url)
        curl.maxResponseBytes = 1 << 20
        let client = CurlClient(configuration: curl)
        services.append(CurlClientService(client: client))
        let source = JWKSSource(url: url, ring: ring, client: client, logger: logger)
        // The keys before the first app connects (a provider that does not answer is tried again).
        await source.refresh()
        services.append(source)
        jwks = source
    }
    let authenticator = ClientAuthenticator(
        tokens: verifier,
        devices: DeviceAuthenticator(
            directory: store,
            masterKey: configuration.deviceMasterKey,
            windowSeconds: configuration.deviceSignatureWindowSeconds,
            nonces: nonces,
            ledger: ledger
        ),
        metrics: metrics,
        jwks: jwks
    )
    if let days = configuration.auditRetentionDays {
        services.append(AuditRetention(store: store, days: days, interval: .seconds(3600), logger: logger))
    }
    services.append(
        RevocationWatcher(store: store, switchboard: switchboard, interval: .milliseconds(configuration.registryPollMilliseconds), logger: logger)
    )
    let authenticationFailures = RateLimiter(
        capacity: configuration.authFailureBurst,
        perSecond: Double(configuration.authFailuresPerMinute) / 60
    )
    let admission = ClientAdmission(authenticator: authenticator, attempts: connectionAttempts, failures: authenticationFailures)
    // Authentication happens here, before the upgrade, so a refusal is an HTTP answer.
    let gate = UpgradeGate { request, remoteIP, logger in
        if switchboard.isDraining { return .refuse(RelayHTTPError.restarting.refusal) }
        let party: Party
        switch request.uri.path {
        case "/ws/app": party = .app
        case "/ws/device": party = .device
        default: return .refuse(RelayHTTPError(.notFound, "No WebSocket endpoint at this path").refusal)
        }
        do throws(RelayHTTPError) {
            let query = request.uri.queryParameters
            let resume = try ResumeRequest.requested(
                token: query.get("resume_token").map(RequestField.present) ?? .absent,
                lastSeq: query.get("last_seq").map { Int($0).map(RequestField.present) ?? .malformed } ?? .absent
            )
            let identity = try await admission.admit(request, query: query, as: party, from: remoteIP, logger: logger)
            let seed = try await switchboard.prepare(identity, resume: resume)
            return .accept { LinkSocket(connection: connection, identity: identity, resume: resume, seed: seed) }
        } catch {
            return .refuse(error.refusal)
        }
    }

    let router = Router(context: RelayRequestContext.self)
    router.get("/healthz") { _, _ in
        let counts = switchboard.table.counts
        return Response(
            status: .ok,
            headers: [.contentType: "application/json"],
            body: .init(
                byteBuffer: ByteBuffer(
                    string: "{\"status\":\"ok\",\"version\":\"\(RelayBuild.version)\",\"revision\":\"\(RelayBuild.revision)\",\"links\":\(counts.apps + counts.devices),\"sessions\":\(counts.sessions)}"
                )
            )
        )
    }
    // Ready while the store answers and takes batches, and the TURN provider mints.
    router.get("/readyz") { _, _ in
        var problems: [String] = []
        do { try await store.check() } catch { problems.append("store: \(error)") }
        if switchboard.isDraining { problems.append("shutting down") }
        if let failure = journal.failure { problems.append("store: writing failed: \(failure)") }
        if let failure = liveState.failure { problems.append("store: writing live state failed: \(failure)") }
        if let failure = await turn.unusableReason() { problems.append("turn (\(turn.name)): \(failure)") }
        guard problems.isEmpty else {
            return Response.json(
                .object(["status": .string("unready"), "problems": .array(problems.map(JSONValue.string))]),
                status: .serviceUnavailable
            )
        }
        return Response.json(.object(["status": .string("ready")]))
    }
    router.get("/metrics") { [metricsToken = configuration.metricsToken] request, _ in
        if let metricsToken {
            guard let presented = ClientAuthenticator.bearerToken(in: request, queryParameter: false),
                LibCrypto.constantTimeEquals(Array(presented.utf8), Array(metricsToken.utf8))
            else {
                throw RelayHTTPError(.unauthorized, "Metrics need 'Authorization: Bearer <RELAY_METRICS_TOKEN>'", headers: [.wwwAuthenticate: "Bearer"])
            }
        }
        let counts = switchboard.table.counts
        let text = metrics.render(links: counts.apps, devices: counts.devices, sessions: counts.sessions, droppedEvents: journal.droppedEvents)
        return Response(
            status: .ok,
            headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
            body: .init(byteBuffer: ByteBuffer(bytes: text))
        )
    }
    HTTPLinkRoutes(
        switchboard: switchboard,
        admission: admission,
        connection: connection,
        maxMessageBytes: configuration.maxMessageBytes,
        keepalive: .seconds(configuration.sseKeepaliveSeconds)
    ).register(on: router)
    BrowserFiles.register(on: router)
    router.get("/api/devices", use: DevicesRoute(authenticator: authenticator, store: store, switchboard: switchboard).respond)
    if let adminToken = configuration.adminToken {
        AdminRoutes(token: adminToken, store: store, switchboard: switchboard).register(on: router)
    }
    router.post(
        "/api/turn/credentials",
        use: TURNCredentialsRoute(
            authenticator: authenticator,
            turn: turn,
            limiter: FleetWideLimiter(
                local: RateLimiter(capacity: configuration.turnRatePerMinute, perSecond: Double(configuration.turnRatePerMinute) / 60),
                fleet: stores.fleet?.store,
                name: "turn_credentials"
            )
        ).respond
    )
    // A plain GET on a WebSocket path (no upgrade asked for) gets 426 rather than a 404.
    for path in ["/ws/app", "/ws/device"] {
        router.get(RouterPath(path)) { _, _ -> Response in
            throw RelayHTTPError(.upgradeRequired, "Connect with a WebSocket upgrade")
        }
    }

    let sockets = OpenSockets()
    services.append(sockets)
    if let tls = configuration.tls { services.append(TLSReloader(tls: tls, logger: logger)) }
    // A trusted proxy carries many clients: its connections are not capped per address.
    let addressing = configuration.addressing
    let connections = ConnectionsPerAddress(limit: configuration.maxConnectionsPerAddress, exempt: addressing.isTrusted)
    let webSocket = WebSocketConnection.Configuration(
        maxMessageBytes: configuration.maxMessageBytes,
        heartbeat: .seconds(configuration.heartbeatSeconds),
        closeTimeout: .seconds(10)
    )
    let application = Application(
        router: router,
        server: HTTPServerBuilder { responder in
            WebSocketServerChannel(
                responder: responder,
                gate: gate,
                webSocket: webSocket,
                sockets: sockets,
                limits: configuration.http,
                connections: connections,
                addressing: addressing,
                tls: configuration.tls
            )
        },
        configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "relay"),
        services: services,
        onServerRunning: { _ in SystemdNotification.send("READY=1\nSTATUS=listening") },
        logger: logger
    )
    return (application, ShutdownService(switchboard: switchboard, drain: .seconds(configuration.shutdownDrainSeconds)), stores.close)
}

/// The stores a relay runs on: the embedded SQLite file, or with `RELAY_DATABASE_URL` PostgreSQL,
/// where every relay on the database is a node of one fleet.
struct RelayStores: Sendable {
    let registry: any RelayRegistry
    let live: any LiveStateStore
    /// This node's place in the fleet (a service: it keeps it, or stops the relay).
    var membership: FleetMembership?
    var fleet: Fleet?
    /// Device nonces spent anywhere in the fleet.
    var nonces: (any NonceLedger)?
    /// Stops what runs beside the services.
    let close: @Sendable () async -> Void

    static func open(_ configuration: RelayConfiguration, logger: Logger) async throws(StoreError) -> RelayStores {
        guard let url = configuration.databaseURL else {
            let store = try RelayStore(path: configuration.databasePath)
            return RelayStores(registry: store, live: store, membership: nil, fleet: nil, nonces: nil, close: {})
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
        return RelayStores(
            registry: store,
            live: store,
            membership: membership,
            fleet: Fleet(store: store, outbox: FleetOutbox(store: store, logger: logger)),
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
}

/// Graceful shutdown (SIGTERM/SIGINT): `go_away` to every link, a drain, then 1001. Run it in
/// the same service group as the application, after it, so it is shut down first.
public struct ShutdownService: Service {
    let switchboard: Switchboard
    let drain: Duration

    public func run() async throws {
        try? await gracefulShutdown()
        SystemdNotification.send("STOPPING=1\nSTATUS=draining")
        await switchboard.shutdown(drain: drain)
    }
}
