/// This process's monotonic instants as Unix seconds and back, for deadlines kept in a store.
import Foundation

/// One reading of both clocks: a deadline stored as Unix seconds by one process becomes an
/// instant of the next process's monotonic clock (the store outlives the process; instants
/// of `ContinuousClock` do not).
struct WallClock: Sendable {
    let now: ContinuousClock.Instant
    let wallNow: Double

    init(now: ContinuousClock.Instant = .now, wallNow: Double = Date().timeIntervalSince1970) {
        self.now = now
        self.wallNow = wallNow
    }

    /// `instant` as Unix seconds.
    func wall(_ instant: ContinuousClock.Instant) -> Double {
        let offset = now.duration(to: instant).components
        return wallNow + Double(offset.seconds) + Double(offset.attoseconds) / 1e18
    }

    /// Unix seconds `time` as an instant of this process's clock.
    func instant(_ time: Double) -> ContinuousClock.Instant {
        now.advanced(by: .milliseconds(Int64(((time - wallNow) * 1000).rounded())))
    }
}
