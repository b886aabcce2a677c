/// Every setting of `relay serve`, read from the environment, `.env` and defaults, with its checks.
import Configuration
import DeviceAuth
import Foundation
import Logging
import OpenSSLCrypto
import RelayWebSocket
import TURNBroker

/// Everything `relay serve` reads, from the environment, a `.env` file and flags.
///
/// Keys (environment spelling; `.env.example` lists them all with their defaults):
/// - `RELAY_HOST` (string, `127.0.0.1`), `RELAY_PORT` (int, `8080`)
/// - `RELAY_JWT_SECRET` (secret, ≥ 32 bytes), `RELAY_JWT_SECRETS` (secret, `kid=secret,...`),
///   `RELAY_JWT_PUBLIC_KEY_FILE` (`path` or `kid=path,...`), `RELAY_JWT_ALGORITHMS` (`HS256`),
///   `RELAY_JWT_ISSUER`, `RELAY_JWT_AUDIENCE` (checked when set), `RELAY_JWT_LEEWAY_S` (30)
/// - `RELAY_DEVICE_MASTER_KEY` (secret, ≥ 32 bytes), `RELAY_DEVICE_SIG_WINDOW_S` (int, 300),
///   `RELAY_DEVICE_CONNECTS_PER_WINDOW` (1000): a device's share of the replay cache
/// - `RELAY_MAX_MESSAGE_BYTES` (65536), `RELAY_MAX_SESSIONS_PER_DEVICE` (4), `RELAY_MAX_SESSIONS_PER_APP` (8)
/// - `RELAY_HEARTBEAT_S` (20), `RELAY_RESUME_GRACE_S` (30), `RELAY_RESUME_BUFFER_MESSAGES` (256),
///   `RELAY_RESUME_BUFFER_BYTES` (1048576), `RELAY_SETUP_TIMEOUT_S` (30)
/// - `RELAY_RATE_BURST` (50), `RELAY_RATE_PER_S` (10): messages per link;
///   `RELAY_CONNECT_BURST` (30), `RELAY_CONNECT_RATE_PER_MIN` (120): connections per device or user;
///   `RELAY_AUTH_FAILURE_BURST` (30), `RELAY_AUTH_FAILURES_PER_MIN` (60): failed authentications per
///   client address; `RELAY_TRUSTED_PROXIES` (CIDRs, none): proxies whose `X-Forwarded-For` or
///   PROXY protocol header gives the client's address
/// - `RELAY_HTTP_MAX_HEADER_BYTES` (16384): request line and headers; `RELAY_HTTP_REQUEST_TIMEOUT_S`
///   (10): for a request to arrive; `RELAY_HTTP_IDLE_TIMEOUT_S` (30): a kept-alive connection
///   between requests; `RELAY_MAX_CONNECTIONS_PER_IP` (1000): open TCP connections per address
/// - `RELAY_SHUTDOWN_DRAIN_S` (10): how long clients get to leave after `go_away`
/// - `RELAY_SSE_KEEPALIVE_S` (15): the `: keepalive` comment interval of event streams
/// - `RELAY_TURN_PROVIDER` (`static`, `cloudflare` or `coturn`), `STUN_URIS` (comma separated),
///   `RELAY_TURN_RATE_PER_MIN` (20), `RELAY_TURN_PROBE_S` (30): an idle relay probes its provider this often
/// - `cloudflare`: `CLOUDFLARE_TURN_KEY_ID`, `CLOUDFLARE_TURN_API_TOKEN` (secret),
///   `CLOUDFLARE_TURN_API_BASE` (`https://rtc.live.cloudflare.com/v1`), `CLOUDFLARE_TURN_KEEP_PORT_53` (0),
///   `CLOUDFLARE_TURN_CONNECT_TIMEOUT_MS` (2000), `CLOUDFLARE_TURN_TIMEOUT_MS` (5000)
/// - `coturn`: `TURN_SHARED_SECRET` (secret), `TURN_URIS` (comma separated `turn:`/`turns:` URIs)
/// - `RELAY_DB` (path, `./relay.sqlite`): the registry and audit log; `RELAY_AUDIT_FLUSH_MS` (100):
///   how often recorded events are committed; `RELAY_REGISTRY_POLL_MS` (1000): how often the
///   relay looks for devices revoked by `relay device revoke` in another process;
///   `RELAY_OUTBOX_FLUSH_MS` (5): how often live links, their kept messages and open sessions
///   are written behind (what a killed relay can lose; contract §11)
/// - `RELAY_DATABASE_URL` (`postgres://user:password@host:5432/database[?sslmode=disable|prefer|require]`):
///   the registry, audit log, nonces and live state on PostgreSQL instead of `RELAY_DB`
///   (one relay process per database for now)
/// - `RELAY_TLS_CERT_FILE`, `RELAY_TLS_KEY_FILE` (PEM): serve `https://` and `wss://` (read again on SIGHUP)
/// - `RELAY_ADMIN_TOKEN` (secret, ≥ 32 bytes): enables `/admin/*`
/// - `RELAY_METRICS_TOKEN` (secret, ≥ 32 bytes): `/metrics` then needs `Authorization: Bearer`
/// - `RELAY_LOG_LEVEL` (`info`), `RELAY_LOG_FORMAT` (`text`, or `json`: one object per line)
///
/// Development mode (`relay serve --dev`, on a loopback address only, with no app-token key and
/// no device master key configured) makes random ones and says so loudly; without `--dev` a
/// relay with nothing configured does not start.
public struct RelayConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 8080
    public var tokens = AppTokenVerifier.Configuration()
    public var deviceMasterKey: String?
    public var deviceSignatureWindowSeconds = 300
    public var deviceConnectsPerWindow = 1000
    public var maxMessageBytes = 64 * 1024
    public var maxSessionsPerDevice = 4
    public var maxSessionsPerApp = 8
    public var heartbeatSeconds = 20
    public var resumeGraceSeconds = 30
    public var resumeBufferMessages = 256
    public var resumeBufferBytes = 1024 * 1024
    public var setupTimeoutSeconds = 30
    public var rateBurst = 50
    public var ratePerSecond = 10.0
    public var connectBurst = 30
    public var connectRatePerMinute = 120
    public var authFailureBurst = 30
    public var authFailuresPerMinute = 60
    public var addressing = ClientAddressing()
    public var http = HTTPLimits()
    public var maxConnectionsPerAddress = 1000
    public var shutdownDrainSeconds = 10
    public var sseKeepaliveSeconds = 15
    public var stunURIs = StaticProvider.defaultSTUNURIs
    public var turn = TURNSettings.staticSTUN
    /// `POST /api/turn/credentials` calls allowed per user per minute.
    public var turnRatePerMinute = 20
    /// With no mint for this long, the relay probes its TURN provider (for `/readyz`).
    public var turnProbeSeconds = 30
    public var logLevel = Logger.Level.info
    /// How log lines look: text, or one JSON object per line.
    public enum LogFormat: String, Sendable { case text, json }
    public var logFormat = LogFormat.text
    /// `RELAY_DB`: the SQLite store of contract §9.
    public var databasePath = "./relay.sqlite"
    public var auditFlushMilliseconds = 100
    /// Days of sessions the audit log keeps; nil keeps them all.
    public var auditRetentionDays: Int?
    public var outboxFlushMilliseconds = 5
    /// `RELAY_DATABASE_URL`: the store on PostgreSQL instead of the SQLite file.
    public var databaseURL: String?
    /// `RELAY_NODE_HEARTBEAT_MS`: how often a node of a fleet (on PostgreSQL) says it is alive;
    /// the others declare it dead after 2 beats once its connection is gone, after 5 anyway.
    public var nodeHeartbeatMilliseconds = 1000
    public var registryPollMilliseconds = 1000
    /// `RELAY_TLS_CERT_FILE` and `RELAY_TLS_KEY_FILE`: the relay serves TLS itself.
    public var tls: ServerTLS?
    /// `RELAY_ADMIN_TOKEN`: without it `/admin/*` answers 404.
    public var adminToken: String?
    /// An identity provider's JWK Set: app-token keys fetched at start, every 10 minutes, and
    /// when a token names a key the relay lacks.
    public var jwksURL: String?
    /// Where the app-token public keys are read from, at start and on SIGHUP.
    var publicKeyFiles = PublicKeyFiles()
    /// When set, a scrape of `/metrics` must present it as a bearer token.
    public var metricsToken: String?
    /// Set when nothing was configured and the relay made its own secrets.
    public var development: DevelopmentSecrets?

    /// Which provider mints ICE servers, with its settings.
    public enum TURNSettings: Sendable {
        case staticSTUN
        case cloudflare(CloudflareProvider.Configuration, connectTimeoutMilliseconds: Int, timeoutMilliseconds: Int)
        case coturn(sharedSecret: String, turnURIs: [String])

        public var name: String {
            switch self {
            case .staticSTUN: "static"
            case .cloudflare: "cloudflare"
            case .coturn: "coturn"
            }
        }
    }

    /// Secrets made up for development mode; printed once at start-up.
    public struct DevelopmentSecrets: Sendable {
        public var jwtSecret: String
        public var deviceMasterKey: String
    }

    /// Every problem found, one line each; start-up stops when there is any.
    public struct Invalid: Error, CustomStringConvertible {
        public var problems: [String]
        public var description: String { problems.joined(separator: "\n") }
    }

    public init() {}

    /// Reads and checks the configuration, collecting every problem before failing. With
    /// `development` (`relay serve --dev`) and no key configured, it makes up its secrets.
    public init(reader: ConfigReader, development allowsDevelopment: Bool = false) throws(Invalid) {
        var read = Reader(reader: reader)
        host = read.string("RELAY_HOST") ?? host
        port = read.int("RELAY_PORT", in: 0...65535) ?? port

        let algorithms = read.list("RELAY_JWT_ALGORITHMS") ?? ["HS256"]
        var allowed = Set<JWTAlgorithm>()
        for name in algorithms {
            if name == "none" || name.lowercased() == "none" {
                read.problem("RELAY_JWT_ALGORITHMS: 'none' can never be allowed")
            } else if let algorithm = JWTAlgorithm(rawValue: name) {
                allowed.insert(algorithm)
            } else {
                read.problem(
                    "RELAY_JWT_ALGORITHMS: unknown algorithm '\(name)' (use HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384 or ES512)"
                )
            }
        }
        tokens.algorithms = allowed

        var secretKeys: [AppTokenVerifier.SecretKey] = []
        if let secret = read.string("RELAY_JWT_SECRET", isSecret: true) {
            if read.strongEnough(secret, name: "RELAY_JWT_SECRET") { secretKeys.append(.init(secret: Array(secret.utf8))) }
        }
        for (kid, secret) in read.keyed("RELAY_JWT_SECRETS", isSecret: true) {
            if read.strongEnough(secret, name: "RELAY_JWT_SECRETS (kid \(kid ?? "-"))") {
                secretKeys.append(.init(id: kid, secret: Array(secret.utf8)))
            }
        }
        tokens.secretKeys = secretKeys
        publicKeyFiles = PublicKeyFiles(
            pemFiles: read.keyed("RELAY_JWT_PUBLIC_KEY_FILE", isSecret: false).map { (kid: $0.0, path: $0.1) },
            jwksFile: read.string("RELAY_JWT_JWKS_FILE")
        )
        let (publicKeys, keyProblems) = publicKeyFiles.read()
        for problem in keyProblems { read.problem(problem) }
        tokens.publicKeys = publicKeys
        if let url = read.string("RELAY_JWT_JWKS_URL") {
            if url.lowercased().hasPrefix("https://") || Self.isLoopbackHTTP(url) {
                jwksURL = url
            } else {
                read.problem("RELAY_JWT_JWKS_URL must be an https:// URL (http:// only on a loopback address)")
            }
        }
        tokens.leewaySeconds = Double(read.int("RELAY_JWT_LEEWAY_S", in: 0...300) ?? 30)
        tokens.issuer = read.string("RELAY_JWT_ISSUER")
        tokens.audience = read.string("RELAY_JWT_AUDIENCE")

        if let key = read.string("RELAY_DEVICE_MASTER_KEY", isSecret: true), read.strongEnough(key, name: "RELAY_DEVICE_MASTER_KEY") {
            deviceMasterKey = key
        }
        deviceSignatureWindowSeconds = read.int("RELAY_DEVICE_SIG_WINDOW_S", in: 10...3600) ?? deviceSignatureWindowSeconds
        deviceConnectsPerWindow = read.int("RELAY_DEVICE_CONNECTS_PER_WINDOW", in: 1...1_000_000) ?? deviceConnectsPerWindow
        maxMessageBytes = read.int("RELAY_MAX_MESSAGE_BYTES", in: 1024...(16 * 1024 * 1024)) ?? maxMessageBytes
        maxSessionsPerDevice = read.int("RELAY_MAX_SESSIONS_PER_DEVICE", in: 1...1000) ?? maxSessionsPerDevice
        maxSessionsPerApp = read.int("RELAY_MAX_SESSIONS_PER_APP", in: 1...1000) ?? maxSessionsPerApp
        heartbeatSeconds = read.int("RELAY_HEARTBEAT_S", in: 1...3600) ?? heartbeatSeconds
        resumeGraceSeconds = read.int("RELAY_RESUME_GRACE_S", in: 0...3600) ?? resumeGraceSeconds
        resumeBufferMessages = read.int("RELAY_RESUME_BUFFER_MESSAGES", in: 1...100_000) ?? resumeBufferMessages
        resumeBufferBytes = read.int("RELAY_RESUME_BUFFER_BYTES", in: 1024...(256 * 1024 * 1024)) ?? resumeBufferBytes
        setupTimeoutSeconds = read.int("RELAY_SETUP_TIMEOUT_S", in: 1...3600) ?? setupTimeoutSeconds
        rateBurst = read.int("RELAY_RATE_BURST", in: 1...100_000) ?? rateBurst
        ratePerSecond = Double(read.int("RELAY_RATE_PER_S", in: 1...100_000) ?? Int(ratePerSecond))
        connectBurst = read.int("RELAY_CONNECT_BURST", in: 1...100_000) ?? connectBurst
        connectRatePerMinute = read.int("RELAY_CONNECT_RATE_PER_MIN", in: 1...1_000_000) ?? connectRatePerMinute
        authFailureBurst = read.int("RELAY_AUTH_FAILURE_BURST", in: 1...100_000) ?? authFailureBurst
        authFailuresPerMinute = read.int("RELAY_AUTH_FAILURES_PER_MIN", in: 1...1_000_000) ?? authFailuresPerMinute
        if let proxies = read.list("RELAY_TRUSTED_PROXIES") {
            var trusted: [CIDR] = []
            for entry in proxies {
                if let cidr = CIDR(entry) {
                    trusted.append(cidr)
                } else {
                    read.problem("RELAY_TRUSTED_PROXIES: '\(entry)' is not an IP address or CIDR (such as 10.0.0.0/8 or ::1)")
                }
            }
            addressing = ClientAddressing(trusted: trusted)
        }
        http.maxHeadBytes = read.int("RELAY_HTTP_MAX_HEADER_BYTES", in: 4096...(1024 * 1024)) ?? http.maxHeadBytes
        read.int("RELAY_HTTP_REQUEST_TIMEOUT_S", in: 1...600).map { http.requestTimeout = .seconds($0) }
        read.int("RELAY_HTTP_IDLE_TIMEOUT_S", in: 1...3600).map { http.idleTimeout = .seconds($0) }
        maxConnectionsPerAddress = read.int("RELAY_MAX_CONNECTIONS_PER_IP", in: 1...1_000_000) ?? maxConnectionsPerAddress
        shutdownDrainSeconds = read.int("RELAY_SHUTDOWN_DRAIN_S", in: 0...600) ?? shutdownDrainSeconds
        sseKeepaliveSeconds = read.int("RELAY_SSE_KEEPALIVE_S", in: 1...300) ?? sseKeepaliveSeconds

        if let uris = read.list("STUN_URIS") {
            for uri in uris where !(uri.hasPrefix("stun:") || uri.hasPrefix("stuns:")) {
                read.problem("STUN_URIS: '\(uri)' is not a stun: or stuns: URI")
            }
            stunURIs = uris
        }
        turnRatePerMinute = read.int("RELAY_TURN_RATE_PER_MIN", in: 1...100_000) ?? turnRatePerMinute
        turnProbeSeconds = read.int("RELAY_TURN_PROBE_S", in: 5...86_400) ?? turnProbeSeconds
        switch read.string("RELAY_TURN_PROVIDER") ?? "static" {
        case "static":
            turn = .staticSTUN
        case "cloudflare":
            let keyID = read.string("CLOUDFLARE_TURN_KEY_ID")
            let token = read.string("CLOUDFLARE_TURN_API_TOKEN", isSecret: true)
            if keyID == nil { read.problem("RELAY_TURN_PROVIDER=cloudflare needs CLOUDFLARE_TURN_KEY_ID") }
            if token == nil { read.problem("RELAY_TURN_PROVIDER=cloudflare needs CLOUDFLARE_TURN_API_TOKEN") }
            let base = read.string("CLOUDFLARE_TURN_API_BASE") ?? "https://rtc.live.cloudflare.com/v1"
            if !(base.hasPrefix("https://") || Self.isLoopbackHTTP(base)) {
                read.problem("CLOUDFLARE_TURN_API_BASE must be an https:// URL (plain http only on 127.0.0.1 or localhost)")
            }
            let keep = read.string("CLOUDFLARE_TURN_KEEP_PORT_53")
            if let keep, !["0", "1"].contains(keep) { read.problem("CLOUDFLARE_TURN_KEEP_PORT_53 must be 0 or 1") }
            let connect = read.int("CLOUDFLARE_TURN_CONNECT_TIMEOUT_MS", in: 50...60_000) ?? 2000
            let total = read.int("CLOUDFLARE_TURN_TIMEOUT_MS", in: 50...120_000) ?? 5000
            if let keyID, let token {
                turn = .cloudflare(
                    CloudflareProvider.Configuration(keyID: keyID, apiToken: token, baseURL: base, keepPort53: keep == "1"),
                    connectTimeoutMilliseconds: connect,
                    timeoutMilliseconds: total
                )
            }
        case "coturn":
            let secret = read.string("TURN_SHARED_SECRET", isSecret: true)
            let uris = read.list("TURN_URIS") ?? []
            if secret == nil { read.problem("RELAY_TURN_PROVIDER=coturn needs TURN_SHARED_SECRET (coturn's static-auth-secret)") }
            if uris.isEmpty { read.problem("RELAY_TURN_PROVIDER=coturn needs TURN_URIS (comma separated turn: or turns: URIs)") }
            for uri in uris where !(uri.hasPrefix("turn:") || uri.hasPrefix("turns:")) {
                read.problem("TURN_URIS: '\(uri)' is not a turn: or turns: URI")
            }
            if let secret, !uris.isEmpty { turn = .coturn(sharedSecret: secret, turnURIs: uris) }
        case let other:
            read.problem("RELAY_TURN_PROVIDER: unknown provider '\(other)' (use static, cloudflare or coturn)")
        }
        switch (read.string("RELAY_TLS_CERT_FILE"), read.string("RELAY_TLS_KEY_FILE")) {
        case (nil, nil):
            break
        case (let certificate?, let key?):
            do {
                tls = try ServerTLS(certificatePath: certificate, keyPath: key)
            } catch {
                read.problem("RELAY_TLS_CERT_FILE/RELAY_TLS_KEY_FILE: \(error)")
            }
        default:
            read.problem("RELAY_TLS_CERT_FILE and RELAY_TLS_KEY_FILE go together: set both or neither")
        }
        databasePath = read.string("RELAY_DB") ?? databasePath
        auditFlushMilliseconds = read.int("RELAY_AUDIT_FLUSH_MS", in: 10...10_000) ?? auditFlushMilliseconds
        auditRetentionDays = read.int("RELAY_AUDIT_RETENTION_DAYS", in: 1...36_500)
        outboxFlushMilliseconds = read.int("RELAY_OUTBOX_FLUSH_MS", in: 1...1000) ?? outboxFlushMilliseconds
        databaseURL = read.string("RELAY_DATABASE_URL")
        nodeHeartbeatMilliseconds = read.int("RELAY_NODE_HEARTBEAT_MS", in: 50...10000) ?? nodeHeartbeatMilliseconds
        registryPollMilliseconds = read.int("RELAY_REGISTRY_POLL_MS", in: 50...600_000) ?? registryPollMilliseconds
        if let token = read.string("RELAY_ADMIN_TOKEN", isSecret: true), read.strongEnough(token, name: "RELAY_ADMIN_TOKEN") {
            adminToken = token
        }
        if let token = read.string("RELAY_METRICS_TOKEN", isSecret: true), read.strongEnough(token, name: "RELAY_METRICS_TOKEN") {
            metricsToken = token
        }
        if let level = read.string("RELAY_LOG_LEVEL") {
            if let parsed = Logger.Level(rawValue: level.lowercased()) {
                logLevel = parsed
            } else {
                read.problem("RELAY_LOG_LEVEL: '\(level)' is not one of trace, debug, info, notice, warning, error, critical")
            }
        }
        if let format = read.string("RELAY_LOG_FORMAT") {
            if let parsed = LogFormat(rawValue: format.lowercased()) {
                logFormat = parsed
            } else {
                read.problem("RELAY_LOG_FORMAT: '\(format)' is not one of text, json")
            }
        }

        let anyTokenKey = !secretKeys.isEmpty || !publicKeys.isEmpty || jwksURL != nil
        let nothingConfigured = read.absent([
            "RELAY_JWT_SECRET", "RELAY_JWT_SECRETS", "RELAY_JWT_PUBLIC_KEY_FILE", "RELAY_JWT_JWKS_FILE", "RELAY_JWT_JWKS_URL", "RELAY_DEVICE_MASTER_KEY",
        ])
        if nothingConfigured && !allowsDevelopment {
            read.problem(
                "nothing is configured: set RELAY_JWT_SECRET and RELAY_DEVICE_MASTER_KEY (see .env.example), or try the relay with made-up secrets: relay serve --dev"
            )
        } else if allowsDevelopment && !nothingConfigured {
            read.problem("--dev makes up the secrets of a relay with none configured, but this one has some: leave out --dev")
        } else if nothingConfigured && !["127.0.0.1", "::1", "localhost"].contains(host) {
            read.problem("--dev serves only this machine (RELAY_HOST 127.0.0.1, ::1 or localhost), not '\(host)': its secrets are made up")
        } else if nothingConfigured {
            let secrets = DevelopmentSecrets(jwtSecret: LibCrypto.randomBytes(32).hexString, deviceMasterKey: LibCrypto.randomBytes(32).hexString)
            development = secrets
            tokens.secretKeys = [.init(secret: Array(secrets.jwtSecret.utf8))]
            deviceMasterKey = secrets.deviceMasterKey
        } else if !anyTokenKey && read.problems.isEmpty {
            read.problem("RELAY_JWT_SECRET, RELAY_JWT_PUBLIC_KEY_FILE, RELAY_JWT_JWKS_FILE or RELAY_JWT_JWKS_URL is required to verify app tokens")
        }
        // (A JWKS URL's keys are known only once fetched.)
        if (anyTokenKey || development != nil) && jwksURL == nil {
            let families = Set(tokens.algorithms.map(\.family))
            let keyed = Set((tokens.secretKeys.isEmpty ? [] : [JWTAlgorithm.Family.hmac]) + tokens.publicKeys.map { $0.kind == .rsa ? .rsa : .ec })
            if families.isDisjoint(with: keyed) && !tokens.algorithms.isEmpty {
                read.problem(
                    "RELAY_JWT_ALGORITHMS: no configured key verifies any of \(tokens.algorithms.map(\.rawValue).sorted().joined(separator: ", "))"
                )
            }
        }
        guard read.problems.isEmpty else { throw Invalid(problems: read.problems) }
    }

    /// Plain http is allowed only towards this machine (a local stand-in for the TURN API).
    static func isLoopbackHTTP(_ url: String) -> Bool {
        url.hasPrefix("http://127.0.0.1:") || url.hasPrefix("http://127.0.0.1/") || url.hasPrefix("http://localhost:")
            || url.hasPrefix("http://localhost/")
    }

    /// Reads raw strings and turns each bad value into one line naming the variable.
    private struct Reader {
        let reader: ConfigReader
        var problems: [String] = []

        static func key(_ name: String) -> ConfigKey {
            ConfigKey(name.lowercased().split(separator: "_").map(String.init))
        }

        mutating func problem(_ line: String) {
            problems.append(line)
        }

        func string(_ name: String, isSecret: Bool = false) -> String? {
            assert(RelayConfiguration.knownKeys.contains(name), "\(name) is read but not in knownKeys")
            guard let value = reader.string(forKey: Self.key(name), isSecret: isSecret)?.trimmingCharacters(in: .whitespaces), !value.isEmpty else {
                return nil
            }
            return value
        }

        func absent(_ names: [String]) -> Bool {
            names.allSatisfy { string($0) == nil }
        }

        mutating func int(_ name: String, in range: ClosedRange<Int>) -> Int? {
            guard let text = string(name) else { return nil }
            guard let value = Int(text), range.contains(value) else {
                problem("\(name) must be an integer from \(range.lowerBound) to \(range.upperBound) (got '\(text.prefix(32))')")
                return nil
            }
            return value
        }

        func list(_ name: String) -> [String]? {
            string(name).map { $0.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty } }
        }

        /// `value` or `kid=value,kid2=value2`.
        func keyed(_ name: String, isSecret: Bool) -> [(String?, String)] {
            guard let text = string(name, isSecret: isSecret) else { return [] }
            let entries = text.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
            guard entries.count > 1 || entries.first?.contains("=") == true else { return [(nil, text)] }
            return entries.map { entry in
                guard let equals = entry.firstIndex(of: "=") else { return (nil, entry) }
                return (String(entry[..<equals]), String(entry[entry.index(after: equals)...]))
            }
        }

        mutating func strongEnough(_ secret: String, name: String) -> Bool {
            guard secret.utf8.count >= 32 else {
                problem("\(name) must be at least 32 bytes (try: openssl rand -hex 32)")
                return false
            }
            return true
        }
    }
}
