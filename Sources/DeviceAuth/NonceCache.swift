/// Device nonces seen within the signature window, so a signed URL works once.
import Synchronization

/// Remembers which nonces each device used while their signature could still be valid, so a
/// captured device URL cannot be replayed.
///
/// Each device has a share of its own (`perDevice` live nonces): a device that spends its share
/// within the window is refused (fail closed: forgetting a live nonce would reopen the replay
/// the cache exists to stop), and no device can crowd out another. `devices` bounds how many
/// devices have live nonces at once. Entries expire when their timestamp leaves the window.
/// `spent` hears of every accepted nonce (the relay writes it to its store), and `remember`
/// loads those a previous run spent, so a restart does not reopen them.
public final class NonceCache: Sendable {
    public enum Outcome: Sendable, Equatable {
        case accepted
        case replayed
        /// This device spent its whole share within the window.
        case deviceFull
        /// Too many devices hold live nonces.
        case full
    }

    private struct State {
        /// Device id → nonce → the Unix second after which its signature is dead anyway.
        var expiries: [String: [String: Int]] = [:]
        var nextSweep = 0
    }

    private let state = Mutex(State())
    public let perDevice: Int
    public let devices: Int
    private let spent: @Sendable (_ deviceID: String, _ nonce: String, _ expiresAt: Int) -> Void

    public init(
        perDevice: Int = 1000,
        devices: Int = 100_000,
        spent: @escaping @Sendable (_ deviceID: String, _ nonce: String, _ expiresAt: Int) -> Void = { _, _, _ in }
    ) {
        precondition(perDevice > 0 && devices > 0)
        self.perDevice = perDevice
        self.devices = devices
        self.spent = spent
    }

    /// Records the pair unless it was seen before; `expiresAt` is the Unix second after which
    /// its signature can no longer be accepted anyway.
    public func insert(deviceID: String, nonce: String, expiresAt: Int, now: Int) -> Outcome {
        let outcome = state.withLock { state -> Outcome in
            // Now and then, forget every dead entry (and devices left with none).
            if now >= state.nextSweep {
                state.expiries = state.expiries.compactMapValues { nonces in
                    let live = nonces.filter { $0.value >= now }
                    return live.isEmpty ? nil : live
                }
                state.nextSweep = now + 60
            }
            guard var nonces = state.expiries.removeValue(forKey: deviceID) else {
                guard state.expiries.count < devices else { return .full }
                state.expiries[deviceID] = [nonce: expiresAt]
                return .accepted
            }
            defer { state.expiries[deviceID] = nonces }
            if let expiry = nonces[nonce], expiry >= now { return .replayed }
            if nonces.count >= perDevice { nonces = nonces.filter { $0.value >= now } }
            guard nonces.count < perDevice else { return .deviceFull }
            nonces[nonce] = expiresAt
            return .accepted
        }
        if outcome == .accepted { spent(deviceID, nonce, expiresAt) }
        return outcome
    }

    /// Loads nonces spent before (by a previous run), without telling `spent` again.
    public func remember(_ nonces: [(deviceID: String, nonce: String, expiresAt: Int)]) {
        state.withLock { state in
            for entry in nonces { state.expiries[entry.deviceID, default: [:]][entry.nonce] = entry.expiresAt }
        }
    }

    /// How many pairs are remembered.
    public var count: Int { state.withLock { $0.expiries.values.reduce(0) { $0 + $1.count } } }
}
