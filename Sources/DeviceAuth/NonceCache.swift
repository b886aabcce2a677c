/// Device nonces seen within the signature window, so a signed URL works once.
import Synchronization

/// Remembers which `(device id, nonce)` pairs were accepted while their signature could still be
/// valid, so a captured device URL cannot be replayed.
///
/// Memory is bounded by `capacity`. Entries expire when their timestamp leaves the window. When
/// the cache is full of live entries it refuses new ones (fail closed) rather than forgetting a
/// live nonce, which would reopen the replay it exists to stop.
public final class NonceCache: Sendable {
    public enum Outcome: Sendable, Equatable {
        case accepted
        case replayed
        case full
    }

    private struct Key: Hashable {
        var deviceID: String
        var nonce: String
    }

    private struct State {
        var expiries: [Key: Int] = [:]
        var nextSweep = 0
    }

    private let state = Mutex(State())
    public let capacity: Int

    public init(capacity: Int = 100_000) {
        precondition(capacity > 0)
        self.capacity = capacity
    }

    /// Records the pair unless it was seen before; `expiresAt` is the Unix second after which
    /// its signature can no longer be accepted anyway.
    public func insert(deviceID: String, nonce: String, expiresAt: Int, now: Int) -> Outcome {
        let key = Key(deviceID: deviceID, nonce: nonce)
        return state.withLock { state in
            if let expiry = state.expiries[key], expiry >= now { return .replayed }
            // Sweep when full, and otherwise now and then, so dead entries never pile up.
            if state.expiries.count >= capacity || now >= state.nextSweep {
                state.expiries = state.expiries.filter { $0.value >= now }
                state.nextSweep = now + 60
            }
            guard state.expiries.count < capacity else { return .full }
            state.expiries[key] = expiresAt
            return .accepted
        }
    }

    /// How many pairs are remembered.
    public var count: Int { state.withLock { $0.expiries.count } }
}
