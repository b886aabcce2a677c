/// What each component is made from: the configuration read once, handed out per component.
import DeviceAuth
import Logging
import ServiceLifecycle
import TURNBroker

extension Switchboard.Limits {
    /// The switchboard's limits as the configuration sets them.
    init(_ configuration: RelayConfiguration) {
        self.init(
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
        )
    }
}

extension RelayConfiguration {
    /// The TURN provider the configuration names (`RELAY_TURN_PROVIDER`), and the services it
    /// needs running (the HTTP client of Cloudflare's API).
    func turnProvider(metrics: RelayMetrics, logger: Logger) -> (provider: any TURNProvider, services: [any Service]) {
        switch turn {
        case .staticSTUN:
            return (StaticProvider(stunURIs: stunURIs), [])
        case .cloudflare(let settings, let connectTimeout, let timeout):
            var curl = CurlClient.Configuration()
            curl.connectTimeoutMilliseconds = connectTimeout
            curl.totalTimeoutMilliseconds = timeout
            curl.allowPlainHTTP = Self.isLoopbackHTTP(settings.baseURL)
            let client = CurlClient(configuration: curl)
            let provider = CloudflareProvider(configuration: settings, client: client, logger: logger, metrics: metrics.metricsFactory)
            return (provider, [CurlClientService(client: client)])
        case .coturn(let secret, let uris):
            return (CoturnProvider(sharedSecret: secret, turnURIs: uris, stunURIs: stunURIs), [])
        }
    }

    /// The identity provider's keys from `RELAY_JWT_JWKS_URL` into `ring`, fetched once before
    /// the first app connects (a provider that does not answer is tried again), and the
    /// services that keep them fresh. Nil without a JWKS URL.
    func jwksSource(into ring: KeyRing?, logger: Logger) async -> (source: JWKSSource, services: [any Service])? {
        guard let url = jwksURL, let ring else { return nil }
        var curl = CurlClient.Configuration()
        curl.allowPlainHTTP = Self.isLoopbackHTTP(url)
        curl.maxResponseBytes = 1 << 20
        let client = CurlClient(configuration: curl)
        let source = JWKSSource(url: url, ring: ring, client: client, logger: logger)
        await source.refresh()
        return (source, [CurlClientService(client: client), source])
    }

    /// Connection attempts per device id or user id (`RELAY_CONNECT_BURST`, `RELAY_CONNECT_RATE_PER_MIN`).
    var connectionAttempts: RateLimiter {
        RateLimiter(capacity: connectBurst, perSecond: Double(connectRatePerMinute) / 60)
    }

    /// Failed authentications per client address (`RELAY_AUTH_FAILURE_BURST`, `RELAY_AUTH_FAILURES_PER_MIN`).
    var authenticationFailures: RateLimiter {
        RateLimiter(capacity: authFailureBurst, perSecond: Double(authFailuresPerMinute) / 60)
    }
}
