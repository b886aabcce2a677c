/// A token bucket (burst, refill rate) that counts refusals in a row: the per-link and per-address limits.

/// A token bucket: `burst` at once, refilled at `perSecond`; counts refusals in a row. Time
/// comes in as instants of the caller's clock.
public struct TokenBucket<Instant: InstantProtocol & Sendable>: Sendable where Instant.Duration == Duration {
    public let burst: Double
    public let perSecond: Double
    @usableFromInline var tokens: Double
    /// When a token was last taken.
    @usableFromInline var lastTaken: Instant?
    /// Takes refused since the last one let through.
    @usableFromInline var refused = 0

    public var updatedAt: Instant? { lastTaken }
    public var refusedInARow: Int { refused }

    public init(burst: Int, perSecond: Double) {
        self.burst = Double(burst)
        self.perSecond = perSecond
        self.tokens = Double(burst)
    }

    /// Spends a token if there is one.
    @inlinable
    public mutating func take(now: Instant) -> Bool {
        tokens = tokens(at: now)
        lastTaken = now
        guard tokens >= 1 else {
            refused += 1
            return false
        }
        tokens -= 1
        refused = 0
        return true
    }

    /// Whether a take at `now` would succeed.
    public func hasToken(at now: Instant) -> Bool {
        tokens(at: now) >= 1
    }

    /// Whole seconds (at least 1) from `now` until a token is back.
    public func secondsUntilToken(at now: Instant) -> Int {
        max(1, Int(((1 - tokens(at: now)) / perSecond).rounded(.up)))
    }

    /// How long from `now` until a token is back (zero when there is one).
    public func durationUntilToken(at now: Instant) -> Duration {
        let missing = 1 - tokens(at: now)
        return missing <= 0 ? .zero : .nanoseconds(Int64((missing / perSecond * 1e9).rounded(.up)))
    }

    /// True once the bucket has refilled: it then says nothing a fresh one would not.
    public func isFull(at now: Instant) -> Bool {
        tokens(at: now) >= burst
    }

    @inlinable
    func tokens(at now: Instant) -> Double {
        guard let lastTaken else { return tokens }
        let elapsed = lastTaken.duration(to: now)
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return min(burst, tokens + max(0, seconds) * perSecond)
    }
}
