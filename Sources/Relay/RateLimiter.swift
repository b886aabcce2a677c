import Foundation
import Synchronization

/// Token buckets keyed by a string (a user id): `capacity` calls at once, refilled at
/// `perSecond`. Memory is bounded: past `maxKeys` buckets, those that have refilled completely
/// (they hold no information) are forgotten, and if all are busy the oldest-touched go.
final class RateLimiter: Sendable {
    enum Decision: Equatable {
        case allowed
        /// Denied; a token is back after this many seconds.
        case denied(retryAfterSeconds: Int)
    }

    private struct Bucket {
        var tokens: Double
        var updatedAt: Double
    }

    private let buckets = Mutex<[String: Bucket]>([:])
    let capacity: Double
    let perSecond: Double
    let maxKeys: Int

    init(capacity: Int, perSecond: Double, maxKeys: Int = 100_000) {
        self.capacity = Double(capacity)
        self.perSecond = perSecond
        self.maxKeys = maxKeys
    }

    func take(_ key: String, now: Double = Date().timeIntervalSince1970) -> Decision {
        buckets.withLock { buckets in
            var bucket = buckets[key] ?? Bucket(tokens: capacity, updatedAt: now)
            bucket.tokens = min(capacity, bucket.tokens + max(0, now - bucket.updatedAt) * perSecond)
            bucket.updatedAt = now
            defer {
                buckets[key] = bucket
                if buckets.count > maxKeys { prune(&buckets, now: now) }
            }
            guard bucket.tokens >= 1 else {
                return .denied(retryAfterSeconds: max(1, Int(((1 - bucket.tokens) / perSecond).rounded(.up))))
            }
            bucket.tokens -= 1
            return .allowed
        }
    }

    private func prune(_ buckets: inout [String: Bucket], now: Double) {
        buckets = buckets.filter { $0.value.tokens + (now - $0.value.updatedAt) * perSecond < capacity }
        if buckets.count > maxKeys {
            let keep = buckets.sorted { $0.value.updatedAt > $1.value.updatedAt }.prefix(maxKeys / 2)
            buckets = Dictionary(uniqueKeysWithValues: keep.map { ($0.key, $0.value) })
        }
    }
}
