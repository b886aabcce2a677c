/// A token bucket: `burst` at once, refilled at `perSecond`; counts refusals in a row.
struct TokenBucket: Sendable {
    let burst: Double
    let perSecond: Double
    private(set) var tokens: Double
    private(set) var updatedAt: ContinuousClock.Instant?
    /// Takes refused since the last one let through.
    private(set) var refusedInARow = 0

    init(burst: Int, perSecond: Double) {
        self.burst = Double(burst)
        self.perSecond = perSecond
        self.tokens = Double(burst)
    }

    /// Spends a token if there is one.
    mutating func take(now: ContinuousClock.Instant) -> Bool {
        tokens = tokens(at: now)
        updatedAt = now
        guard tokens >= 1 else {
            refusedInARow += 1
            return false
        }
        tokens -= 1
        refusedInARow = 0
        return true
    }

    /// Whole seconds (at least 1) until a token is back.
    var secondsUntilNextToken: Int {
        max(1, Int(((1 - tokens) / perSecond).rounded(.up)))
    }

    /// True once the bucket has refilled: it then says nothing a fresh one would not.
    func isFull(at now: ContinuousClock.Instant) -> Bool {
        tokens(at: now) >= burst
    }

    private func tokens(at now: ContinuousClock.Instant) -> Double {
        guard let updatedAt else { return tokens }
        let elapsed = now - updatedAt
        let seconds = Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18
        return min(burst, tokens + max(0, seconds) * perSecond)
    }
}
