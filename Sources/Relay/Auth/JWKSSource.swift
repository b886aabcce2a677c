/// `RELAY_JWT_JWKS_URL`: app-token keys fetched from an identity provider, and fetched again.
import DeviceAuth
import Foundation
import Logging
import ServiceLifecycle
import Synchronization
import TURNBroker

/// Keeps a `KeyRing` filled from a JWKS URL (through libcurl): fetched as the relay starts, every
/// `interval`, and when a token names a `kid` no key has (at most once every `missInterval`), so a
/// provider's new signing key works from its first token.
final class JWKSSource: Service, Sendable {
    let url: String
    let ring: KeyRing
    private let client: CurlClient
    private let interval: Duration
    private let missInterval: Duration
    private let logger: Logger
    /// When a token naming an unknown key last made it fetch.
    private let lastMissFetch = Mutex<ContinuousClock.Instant?>(nil)

    init(url: String, ring: KeyRing, client: CurlClient, interval: Duration = .seconds(600), missInterval: Duration = .seconds(10), logger: Logger) {
        self.url = url
        self.ring = ring
        self.client = client
        self.interval = interval
        self.missInterval = missInterval
        self.logger = logger
    }

    /// Fetches the key set and puts its keys in the ring; false (keeping the keys it had) when
    /// the provider cannot be reached or answers something else than a key set.
    @discardableResult
    func refresh() async -> Bool {
        do {
            let answer = try await client.get(url: url, headers: ["Accept: application/json"])
            guard answer.status == 200 else {
                logger.warning("JWKS fetch failed", metadata: ["jwks.url": "\(url)", "http.status": "\(answer.status)"])
                return false
            }
            let (keys, skipped) = try JSONWebKeySet.publicKeys(Data(answer.body))
            ring.replace(with: keys)
            logger.info("JWKS fetched", metadata: ["jwks.url": "\(url)", "jwks.keys": "\(keys.count)", "jwks.skipped": "\(skipped)"])
            return true
        } catch {
            logger.warning("JWKS fetch failed", metadata: ["jwks.url": "\(url)", "error": "\(error)"])
            return false
        }
    }

    /// After a token named a key the ring lacks: fetch again, unless a miss did so within
    /// `missInterval` (a flood of made-up `kid`s costs one fetch per interval).
    func refreshAfterMiss() async -> Bool {
        let due = lastMissFetch.withLock { last in
            guard let last, ContinuousClock.now - last < missInterval else {
                last = .now
                return true
            }
            return false
        }
        return due ? await refresh() : false
    }

    func run() async throws {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
            if Task.isShuttingDownGracefully || Task.isCancelled { break }
            await refresh()
        }
    }
}
