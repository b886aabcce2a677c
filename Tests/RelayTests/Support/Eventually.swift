import Foundation
import RelayTestSupport
import Testing

/// Polls `probe` until it gives a value or `timeout` passes: for effects with no event to await,
/// such as a batch the relay commits to its store on its own schedule.
func eventually<T>(_ what: String, timeout: Duration = .seconds(10), _ probe: () async throws -> T?) async throws -> T {
    let deadline = ContinuousClock.now + timeout
    while true {
        if let value = try await probe() { return value }
        guard ContinuousClock.now < deadline else { throw TimedOut(what: what) }
        try await Task.sleep(for: .milliseconds(20))
    }
}
