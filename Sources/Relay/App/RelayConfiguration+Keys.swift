/// The keys the relay reads, and a clear line for a key that is none of them.

extension RelayConfiguration {
    /// Every key the relay reads (`.env.example` lists each with its default).
    public static let knownKeys: Set<String> = [
        "RELAY_HOST", "RELAY_PORT", "RELAY_JWT_SECRET", "RELAY_JWT_SECRETS", "RELAY_JWT_PUBLIC_KEY_FILE", "RELAY_JWT_JWKS_FILE", "RELAY_JWT_JWKS_URL", "RELAY_JWT_ALGORITHMS",
        "RELAY_JWT_ISSUER", "RELAY_JWT_AUDIENCE", "RELAY_JWT_LEEWAY_S", "RELAY_DEVICE_MASTER_KEY", "RELAY_DEVICE_SIG_WINDOW_S",
        "RELAY_DEVICE_CONNECTS_PER_WINDOW", "RELAY_MAX_MESSAGE_BYTES", "RELAY_MAX_SESSIONS_PER_DEVICE", "RELAY_MAX_SESSIONS_PER_APP",
        "RELAY_HEARTBEAT_S", "RELAY_RESUME_GRACE_S", "RELAY_RESUME_BUFFER_MESSAGES", "RELAY_RESUME_BUFFER_BYTES", "RELAY_SETUP_TIMEOUT_S",
        "RELAY_RATE_BURST", "RELAY_RATE_PER_S", "RELAY_CONNECT_BURST", "RELAY_CONNECT_RATE_PER_MIN", "RELAY_AUTH_FAILURE_BURST",
        "RELAY_AUTH_FAILURES_PER_MIN", "RELAY_TRUSTED_PROXIES", "RELAY_HTTP_MAX_HEADER_BYTES",
        "RELAY_HTTP_REQUEST_TIMEOUT_S", "RELAY_HTTP_IDLE_TIMEOUT_S", "RELAY_MAX_CONNECTIONS_PER_IP", "RELAY_SHUTDOWN_DRAIN_S",
        "RELAY_SSE_KEEPALIVE_S", "RELAY_TURN_PROVIDER", "STUN_URIS", "RELAY_TURN_RATE_PER_MIN", "RELAY_TURN_PROBE_S", "CLOUDFLARE_TURN_KEY_ID",
        "CLOUDFLARE_TURN_API_TOKEN", "CLOUDFLARE_TURN_API_BASE", "CLOUDFLARE_TURN_KEEP_PORT_53", "CLOUDFLARE_TURN_CONNECT_TIMEOUT_MS",
        "CLOUDFLARE_TURN_TIMEOUT_MS", "TURN_SHARED_SECRET", "TURN_URIS", "RELAY_DB", "RELAY_DATABASE_URL", "RELAY_NODE_HEARTBEAT_MS", "RELAY_AUDIT_FLUSH_MS", "RELAY_AUDIT_RETENTION_DAYS", "RELAY_OUTBOX_FLUSH_MS", "RELAY_REGISTRY_POLL_MS",
        "RELAY_ADMIN_TOKEN", "RELAY_METRICS_TOKEN", "RELAY_LOG_LEVEL", "RELAY_LOG_FORMAT", "RELAY_TLS_CERT_FILE", "RELAY_TLS_KEY_FILE",
    ]

    /// One problem for each of `names` that looks like a relay setting (`RELAY_*`,
    /// `CLOUDFLARE_TURN_*`) but is none, naming the closest known key: a misspelt key would
    /// otherwise leave its setting at the default without a word.
    public static func unknownKeyProblems(_ names: some Sequence<String>) -> [String] {
        Set(names).filter { ($0.hasPrefix("RELAY_") || $0.hasPrefix("CLOUDFLARE_TURN_")) && !knownKeys.contains($0) }.sorted().map { name in
            let closest = knownKeys.min { editDistance(name, $0) < editDistance(name, $1) || (editDistance(name, $0) == editDistance(name, $1) && $0 < $1) }!
            return "\(name) is not a setting of the relay (did you mean \(closest)?)"
        }
    }

    /// Whether `name=value` is one of the variables Kubernetes puts in every pod of a namespace
    /// with a Service whose name starts with `relay` (`relay`, `relay-signal`, ...): the
    /// service's address (`RELAY_SERVICE_HOST`, `RELAY_SERVICE_PORT`, `RELAY_SERVICE_PORT_<name>`)
    /// and its Docker-style links (`RELAY_PORT=tcp://10.96.0.12:8080`, `RELAY_PORT_8080_TCP`,
    /// with `_PROTO`, `_PORT`, `_ADDR`). They are no settings: the relay ignores them (with one
    /// warning); a `RELAY_PORT` that is a number is the setting.
    public static func isServiceLink(_ name: String, value: String) -> Bool {
        guard name.hasPrefix("RELAY") else { return false }
        if name.hasSuffix("_PORT"), ["tcp://", "udp://", "sctp://"].contains(where: value.hasPrefix) { return true }
        return name.wholeMatch(of: serviceLink) != nil
    }

    nonisolated(unsafe) private static let serviceLink = try! Regex(
        #"RELAY(_[A-Z0-9_]+)?_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT_[0-9]+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)"#
    )

    /// Levenshtein distance between two keys.
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var row = [i + 1]
            for (j, y) in b.enumerated() {
                row.append(Swift.min(previous[j + 1] + 1, row[j] + 1, previous[j] + (x == y ? 0 : 1)))
            }
            previous = row
        }
        return previous[b.count]
    }
}
