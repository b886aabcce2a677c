/// Wraps the configured TURN provider with mint metrics and its health for /readyz.
import Foundation
import Metrics
import ServiceLifecycle
import Synchronization
import TURNBroker

/// The configured TURN provider as the relay uses it: every mint is counted and timed
/// (`relay_turn_mints_total`, `relay_turn_mint_errors_total`, `relay_turn_mint_seconds`, by
/// provider), and the last outcome says whether the provider is usable (`/readyz`). As a
/// service it probes the provider (a mint, ttl 60 s, revoked at once) whenever `probeEvery`
/// passed without any mint, so an idle relay still knows; the first readiness check probes
/// when nothing is known yet, so a provider unreachable from the start is never called ready.
final class ObservedTURNProvider: TURNProvider, Service {
    private let base: any TURNProvider
    private let mints: Counter
    private let failures: Counter
    private let timeouts: Counter
    private let mintTime: Timer
    private struct Health {
        /// The last mint's failure (nil: the last one worked, or none yet).
        var failure: String?
        /// When the last mint (a probe too) ended; nil: none yet.
        var lastOutcomeAt: ContinuousClock.Instant?
        /// When the readiness check last probed.
        var probedAt: ContinuousClock.Instant?
    }

    private let state = Mutex(Health())
    private let probeEvery: Duration

    /// A failing provider is probed by `/readyz` at most this often (a relay taken out of the
    /// load balancer gets no sessions, so it would otherwise never learn the provider is back).
    static let probeInterval = Duration.seconds(2)

    init(_ base: any TURNProvider, probeEvery: Duration = .seconds(30), factory: any MetricsFactory) {
        self.base = base
        self.probeEvery = probeEvery
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
            state.withLock {
                $0.failure = nil
                $0.lastOutcomeAt = .now
            }
            return document
        } catch {
            mintTime.recordInterval(since: start)
            (error.kind == .upstreamTimedOut ? timeouts : failures).increment()
            state.withLock {
                $0.failure = error.detail
                $0.lastOutcomeAt = .now
            }
            throw error
        }
    }

    func revoke(_ document: CredentialDocument) async {
        await base.revoke(document)
    }

    /// Nil when the provider is usable, else why not. With nothing known yet, or when the last
    /// mint failed, a probe decides (after a failure at most once per `probeInterval`).
    func unusableReason() async -> String? {
        let probe: Bool = state.withLock { state in
            // Nothing known yet: probe (a check at start-up says what is true).
            if state.lastOutcomeAt == nil { return true }
            guard state.failure != nil else { return false }
            if let last = state.probedAt, ContinuousClock.now - last < Self.probeInterval { return false }
            state.probedAt = .now
            return true
        }
        if probe { await self.probe() }
        return state.withLock { $0.failure }
    }

    /// One probe mint, revoked at once.
    private func probe() async {
        if let document = try? await mint(ttl: 60, identifier: "relay:readyz") {
            await base.revoke(document)
        }
    }

    /// Probes whenever `probeEvery` passed without a mint, until the relay shuts down.
    func run() async throws {
        let start = ContinuousClock.now
        while true {
            let next = state.withLock { $0.lastOutcomeAt ?? start } + probeEvery
            try? await cancelWhenGracefulShutdown { try await Task.sleep(until: next, clock: .continuous) }
            guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return }
            let idle = state.withLock { state in ContinuousClock.now - (state.lastOutcomeAt ?? start) >= probeEvery }
            if idle { await probe() }
        }
    }
}

extension Timer {
    func recordInterval(since start: ContinuousClock.Instant) {
        let elapsed = (ContinuousClock.now - start).components
        recordNanoseconds(elapsed.seconds * 1_000_000_000 + elapsed.attoseconds / 1_000_000_000)
    }
}
