import Foundation

/// Runs blocking work (waiting for a child process, reading its pipes) on a thread of its own,
/// so it never holds one of the few threads Swift concurrency runs every test's relay on.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread {
            continuation.resume(with: Result { try body() })
        }
    }
}
