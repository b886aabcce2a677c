/// Token buckets keyed by a string (a user, a client address), bounded in memory.
import Registry
import RelayCore
import Synchronization

/// Token buckets keyed by a string (a user id, a client IP): `capacity` calls at once, refilled
/// at `perSecond`. Memory is bounded: past `maxKeys` buckets, those that have refilled
/// completely (they hold no information) are forgotten, and if all are busy the
/// least recently used go.
final class RateLimiter: Sendable {
    enum Decision: Equatable {
        case allowed
        /// Denied; a token is back after this many seconds.
        case denied(retryAfterSeconds: Int)
    }

    private let buckets = Mutex<[String: TokenBucket<ContinuousClock.Instant>]>([:])
    let capacity: Int
    let perSecond: Double
    let maxKeys: Int

    init(capacity: Int, perSecond: Double, maxKeys: Int = 100_000) {
        self.capacity = capacity
        self.perSecond = perSecond
        self.maxKeys = maxKeys
    }

    func take(_ key: String, now: ContinuousClock.Instant = .now) -> Decision {
        buckets.withLock { buckets in
            var bucket = buckets[key] ?? TokenBucket<ContinuousClock.Instant>(burst: capacity, perSecond: perSecond)
            let allowed = bucket.take(now: now)
            buckets[key] = bucket
            if buckets.count > maxKeys { prune(&buckets, now: now) }
            return allowed ? .allowed : .denied(retryAfterSeconds: bucket.secondsUntilToken(at: now))
        }
    }

    /// Whether `key` has a token now, without taking it.
    func check(_ key: String, now: ContinuousClock.Instant = .now) -> Decision {
        buckets.withLock { buckets in
            guard let bucket = buckets[key], !bucket.hasToken(at: now) else { return .allowed }
            return .denied(retryAfterSeconds: bucket.secondsUntilToken(at: now))
        }
    }

    private func prune(_ buckets: inout [String: TokenBucket<ContinuousClock.Instant>], now: ContinuousClock.Instant) {
        buckets = buckets.filter { !$0.value.isFull(at: now) }
        if buckets.count > maxKeys {
            let keep = buckets.sorted { ($0.value.updatedAt ?? now) > ($1.value.updatedAt ?? now) }.prefix(maxKeys / 2)
            buckets = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
    }
}

/// A per-key limit as a route takes it: this process's buckets (`RateLimiter`), or one that
/// holds across a fleet (`FleetWideLimiter`), chosen in assembly.
protocol KeyedLimit: Sendable {
    /// Takes a token for `key`, or says when one is back.
    func admit(_ key: String) async -> RateLimiter.Decision
}

extension RateLimiter: KeyedLimit {
    func admit(_ key: String) async -> RateLimiter.Decision { take(key) }
}

/// A per-key limit that holds across a fleet (CLUSTER_DESIGN §10): each take is one statement
/// on the shared store's bucket for the key, whichever node the request lands on; while the
/// store cannot answer, this process's own buckets (N nodes then allow up to N times as much,
/// rather than refusing everyone).
struct FleetWideLimiter: KeyedLimit {
    let local: RateLimiter
    let store: any FleetStore
    /// Names the limit among the others in the shared store.
    let name: String

    func admit(_ key: String) async -> RateLimiter.Decision {
        do throws(StoreError) {
            if let retryAfter = try await store.takeQuota("\(name):\(key)", capacity: local.capacity, perSecond: local.perSecond) {
                return .denied(retryAfterSeconds: retryAfter)
            }
            return .allowed
        } catch {
            return local.take(key)
        }
    }
}
