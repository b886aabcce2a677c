/// The relay's metrics (swift-metrics on a Prometheus registry of its own) and their rendering.
import CoreMetrics
import Foundation
import Prometheus
import RelayCore
import Synchronization

/// The relay's metrics, created once per relay and exported by `GET /metrics` in Prometheus
/// text format. Each relay has its own registry (through swift-metrics' `factory:`), so several
/// relays in one process (tests) never share counters. Labels come from fixed sets: a client
/// cannot make a new time series by sending an odd `type` or `reason`.
final class RelayMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory

    private let links: [Party: CoreMetrics.Gauge]
    private let liveSessions: CoreMetrics.Gauge
    private let sessionsStarted: CoreMetrics.Counter
    private let sessionsEnded: [String: [String: CoreMetrics.Counter]]
    private let setupTime: CoreMetrics.Timer
    private let messagesIn: [String: CoreMetrics.Counter]
    private let messagesOut: [String: CoreMetrics.Counter]
    private let rateLimitedMessages: CoreMetrics.Counter
    private let duplicateMessages: CoreMetrics.Counter
    private let authFailures: [String: CoreMetrics.Counter]
    private let storeDroppedEvents: CoreMetrics.Counter
    private let connectionsRefused: [String: CoreMetrics.Counter]
    /// The dropped events counted so far (the journal keeps a running total).
    private let droppedCounted = Mutex(0)

    /// Message types the relay knows; anything else is counted as `other`.
    static let inboundTypes = [
        "webrtc_request", "webrtc_offer", "webrtc_answer", "webrtc_ice", "webrtc_close", "webrtc_reject", "ping", "ack", "auth", "watch",
        "device_info", "invalid",
    ]
    static let outboundTypes = [
        "hello", "webrtc_credentials", "webrtc_request", "webrtc_offer", "webrtc_answer", "webrtc_ice", "webrtc_close", "pong", "error",
        "peer_status", "go_away", "ice_servers_refresh", "device_status",
    ]
    /// Close reasons the relay gives, and `normal`; a client's own reason counts as `other`.
    static let closeReasons = [
        "normal", "rejected", "setup_timeout", "peer_disconnected", "device_revoked", "admin", "shutdown", "turn_error", "other",
    ]
    static let closers = ["app", "device", "relay"]
    /// Why a TCP connection was answered and closed before it was served.
    static let connectionRefusals = ["per_address_cap"]
    static let authReasons = [
        "missing_token", "token_too_long", "malformed_token", "malformed_header", "unsupported_crit", "unsupported_type", "algorithm_not_allowed", "unknown_key", "bad_signature",
        "expired", "not_yet_valid", "issued_in_future", "wrong_issuer", "wrong_audience", "invalid_claims", "missing_device_parameters",
        "malformed_device_id", "malformed_nonce", "malformed_timestamp", "malformed_signature", "stale_timestamp", "unknown_device",
        "bad_device_signature", "replayed_nonce", "device_revoked", "device_nonces_exhausted", "replay_cache_full", "registry_unavailable",
        "nonces_unavailable", "other",
    ]

    init(registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.durationHistogramBuckets = [
            "relay_session_setup_seconds": [5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000, 30_000].map { Duration.milliseconds($0) },
            "relay_turn_mint_seconds": [1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10_000].map { Duration.milliseconds($0) },
        ]
        self.factory = factory
        links = Dictionary(
            uniqueKeysWithValues: [Party.app, .device].map {
                ($0, CoreMetrics.Gauge(label: "relay_links", dimensions: [("kind", $0.rawValue)], factory: factory))
            }
        )
        liveSessions = CoreMetrics.Gauge(label: "relay_sessions", factory: factory)
        sessionsStarted = CoreMetrics.Counter(label: "relay_sessions_started_total", factory: factory)
        sessionsEnded = Dictionary(
            uniqueKeysWithValues: Self.closers.map { closer in
                (
                    closer,
                    Dictionary(
                        uniqueKeysWithValues: Self.closeReasons.map {
                            (
                                $0,
                                CoreMetrics.Counter(
                                    label: "relay_sessions_ended_total",
                                    dimensions: [("reason", $0), ("by", closer)],
                                    factory: factory
                                )
                            )
                        }
                    )
                )
            }
        )
        setupTime = CoreMetrics.Timer(label: "relay_session_setup_seconds", factory: factory)
        messagesIn = Self.counters(Self.inboundTypes + ["other"], direction: "in", factory: factory)
        messagesOut = Self.counters(Self.outboundTypes + ["other"], direction: "out", factory: factory)
        rateLimitedMessages = CoreMetrics.Counter(label: "relay_rate_limited_messages_total", factory: factory)
        duplicateMessages = CoreMetrics.Counter(label: "relay_duplicate_messages_total", factory: factory)
        authFailures = Dictionary(
            uniqueKeysWithValues: Self.authReasons.map {
                ($0, CoreMetrics.Counter(label: "relay_auth_failures_total", dimensions: [("reason", $0)], factory: factory))
            }
        )
        storeDroppedEvents = CoreMetrics.Counter(label: "relay_store_dropped_events_total", factory: factory)
        connectionsRefused = Dictionary(
            uniqueKeysWithValues: Self.connectionRefusals.map {
                ($0, CoreMetrics.Counter(label: "relay_connections_refused_total", dimensions: [("reason", $0)], factory: factory))
            }
        )
        CoreMetrics.Gauge(
            label: "relay_build_info",
            dimensions: [("version", RelayBuild.version), ("revision", RelayBuild.revision)],
            factory: factory
        ).record(1)
    }

    private static func counters(_ types: [String], direction: String, factory: PrometheusMetricsFactory) -> [String: CoreMetrics.Counter] {
        Dictionary(
            uniqueKeysWithValues: types.map {
                ($0, CoreMetrics.Counter(label: "relay_messages_total", dimensions: [("type", $0), ("direction", direction)], factory: factory))
            }
        )
    }

    /// The factory, for components that make their own metrics (the TURN providers).
    var metricsFactory: any MetricsFactory { factory }

    func received(_ type: String) {
        (messagesIn[type] ?? messagesIn["other"])?.increment()
    }

    func sent(_ type: String) {
        (messagesOut[type] ?? messagesOut["other"])?.increment()
    }

    func sessionStarted() {
        sessionsStarted.increment()
    }

    /// Set-up time: from the app's request to the answer delivered to the device.
    func sessionAnswered(requestedAt: ContinuousClock.Instant) {
        setupTime.recordInterval(since: requestedAt)
    }

    func rateLimited() {
        rateLimitedMessages.increment()
    }

    /// A client re-sent a message (`cseq`) the relay had taken already: dropped (contract §11).
    func duplicateDropped() {
        duplicateMessages.increment()
    }

    func sessionEnded(reason: String, by closer: String) {
        let reason = Self.closeReasons.contains(reason) ? reason : "other"
        sessionsEnded[closer]?[reason]?.increment()
    }

    /// A connection refused before it was served (`connectionRefusals`).
    func connectionRefused(_ reason: String) {
        connectionsRefused[reason]?.increment()
    }

    func authFailed(_ reason: String) {
        (authFailures[reason] ?? authFailures["other"])?.increment()
    }

    /// The scrape: gauges read from the live state, the whole registry as text with a `# HELP`
    /// line for each family, then the process's own metrics.
    func render(links app: Int, devices: Int, sessions: Int, droppedEvents: Int) -> [UInt8] {
        links[.app]?.record(app)
        links[.device]?.record(devices)
        liveSessions.record(sessions)
        let newlyDropped = droppedCounted.withLock { counted in
            defer { counted = max(counted, droppedEvents) }
            return max(0, droppedEvents - counted)
        }
        if newlyDropped > 0 { storeDroppedEvents.increment(by: newlyDropped) }
        var text = ""
        for line in String(decoding: registry.emitToBuffer(), as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false) {
            if line.hasPrefix("# TYPE "), let name = line.dropFirst(7).split(separator: " ").first {
                text += "# HELP \(name) \(Self.help[String(name)] ?? "")\n"
            }
            text += line
            text += "\n"
        }
        while text.hasSuffix("\n\n") { text.removeLast() }
        text += ProcessMetrics.render()
        return Array(text.utf8)
    }

    /// What each family counts, for its `# HELP` line.
    static let help: [String: String] = [
        "relay_build_info": "The relay's version and the git revision it was built from (always 1).",
        "relay_links": "Live links (attached or detached within their resume grace), by kind of client.",
        "relay_sessions": "Open sessions.",
        "relay_sessions_started_total": "Sessions opened.",
        "relay_sessions_ended_total": "Sessions closed, by reason and by who closed them.",
        "relay_session_setup_seconds": "Time from an app's webrtc_request to its answer delivered to the device, in seconds.",
        "relay_messages_total": "Messages received from clients (in) and sent to them (out), by type.",
        "relay_rate_limited_messages_total": "Messages dropped by the per-link rate limit.",
        "relay_duplicate_messages_total": "Messages a client sent again (same cseq) and the relay dropped.",
        "relay_auth_failures_total": "Refused app tokens and device signatures, by reason.",
        "relay_connections_refused_total": "TCP connections answered and closed before they were served, by reason (per_address_cap: RELAY_MAX_CONNECTIONS_PER_IP).",
        "relay_store_dropped_events_total": "Audit events and device sightings dropped because the store's write queue was full.",
        "relay_turn_mints_total": "ICE server credentials minted, by provider.",
        "relay_turn_mint_errors_total": "ICE server mints that failed or timed out, by provider.",
        "relay_turn_mint_seconds": "Time to mint ICE server credentials, in seconds, by provider.",
        "relay_turn_revocations_failed_total": "TURN credential revocations that failed, by provider.",
    ]
}
