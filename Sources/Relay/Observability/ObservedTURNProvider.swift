/// Wraps the configured TURN provider with mint metrics and its health for /readyz.
import Foundation
import Metrics
import Synchronization
import TURNBroker

/// The configured TURN provider as the relay uses it: every mint is counted and timed
/// (`relay_turn_mints_total`, `relay_turn_mint_errors_total`, `relay_turn_mint_seconds`, by
/// provider), and the last outcome says whether the provider is usable (`/readyz`).
final class ObservedTURNProvider: TURNProvider {
    private let base: any TURNProvider
    private let mints: Counter
    private let failures: Counter
    private let timeouts: Counter
    private let mintTime: Timer
    /// The last mint's failure (nil: the last one worked, or none yet), and when the readiness
    /// check last probed.
    private let state = Mutex<(failure: String?, probedAt: ContinuousClock.Instant?)>((nil, nil))

    /// A failing provider is probed by `/readyz` at most this often (a relay taken out of the
    /// load balancer gets no sessions, so it would otherwise never learn the provider is back).
    static let probeInterval = Duration.seconds(2)

    init(_ base: any TURNProvider, factory: any MetricsFactory) {
        self.base = base
        let provider = [("provider", base.name)]
        mints = Counter(label: "relay_turn_mints_total", dimensions: provider, factory: factory)
        failures = Counter(label: "relay_turn_mint_errors_total", dimensions: provider + [("kind", "failed")], factory: factory)
        timeouts = Counter(label: "relay_turn_mint_errors_total", dimensions: provider + [("kind", "timed_out")], factory: factory)
        mintTime = Timer(label: "relay_turn_mint_seconds", dimensions: provider, factory: factory)
    }

    var name: String { base.name }

    func mint(ttl: Int, identifier: String) async throws(TURNError) -> CredentialDocument {
        let start = ContinuousClock.now
        do {
            let document = try await base.mint(ttl: ttl, identifier: identifier)
            mintTime.recordInterval(since: start)
            mints.increment()
            state.withLock { $0.failure = nil }
            return document
        } catch {
            mintTime.recordInterval(since: start)
            (error.kind == .upstreamTimedOut ? timeouts : failures).increment()
            state.withLock { $0.failure = error.detail }
            throw error
        }
    }

    func revoke(_ document: CredentialDocument) async {
        await base.revoke(document)
    }

    /// Nil when the provider is usable, else why not. When the last mint failed, a probe mint
    /// (ttl 60 s, revoked at once) decides, at most once per `probeInterval`.
    func unusableReason() async -> String? {
        let probe: Bool = state.withLock { state in
            guard state.failure != nil else { return false }
            if let last = state.probedAt, ContinuousClock.now - last < Self.probeInterval { return false }
            state.probedAt = .now
            return true
        }
        if probe, let document = try? await mint(ttl: 60, identifier: "relay:readyz") {
            await base.revoke(document)
        }
        return state.withLock { $0.failure }
    }
}

extension Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = (ContinuousClock.now - start).components
        recordNanoseconds(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
    }
}
