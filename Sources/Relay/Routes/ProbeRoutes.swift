/// `GET /healthz`, `GET /readyz` and `GET /metrics`: what load balancers, orchestrators and
/// Prometheus ask the relay.
import Hummingbird
import OpenSSLCrypto
import Registry
import RelayCore

/// Liveness (`/healthz`: the process answers, with its version and counts), readiness
/// (`/readyz`: the store answers and takes batches, the TURN provider mints, no drain is under
/// way) and the metrics (`/metrics`, behind `RELAY_METRICS_TOKEN` when it is set).
struct ProbeRoutes: Sendable {
    let switchboard: Switchboard
    let store: any RelayRegistry
    let journal: StoreWriter
    let liveState: LiveStateJournal
    let turn: ObservedTURNProvider
    let metrics: RelayMetrics
    let metricsToken: String?

    var routes: RouteCollection<RelayRequestContext> {
        let routes = RouteCollection(context: RelayRequestContext.self)
        routes.get("/healthz", use: health)
        routes.get("/readyz", use: readiness)
        routes.get("/metrics", use: scrape)
        return routes
    }

    @Sendable func health(_ request: Request, context: RelayRequestContext) -> Response {
        let counts = switchboard.table.counts
        let body =
            "{\"status\":\"ok\",\"version\":\"\(RelayBuild.version)\",\"revision\":\"\(RelayBuild.revision)\","
            + "\"links\":\(counts.apps + counts.devices),\"sessions\":\(counts.sessions)}"
        return Response(status: .ok, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(string: body)))
    }

    @Sendable func readiness(_ request: Request, context: RelayRequestContext) async -> Response {
        var problems: [String] = []
        // Within a second whatever the store does (a probe's own timeout is often 1 s): a
        // store that hangs is unready, with its reason, not a probe that times out.
        do { try await store.check(within: .milliseconds(800)) } catch { problems.append("store: \(error)") }
        if switchboard.isDraining { problems.append("shutting down") }
        if let failure = journal.failure { problems.append("store: writing failed: \(failure)") }
        if let failure = liveState.failure { problems.append("store: writing live state failed: \(failure)") }
        if let failure = await turn.unusableReason() { problems.append("turn (\(turn.name)): \(failure)") }
        guard problems.isEmpty else {
            return .json(.object(["status": .string("unready"), "problems": .array(problems.map(JSONValue.string))]), status: .serviceUnavailable)
        }
        return .json(.object(["status": .string("ready")]))
    }

    @Sendable func scrape(_ request: Request, context: RelayRequestContext) throws -> Response {
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
}
