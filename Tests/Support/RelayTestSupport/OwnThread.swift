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

extension Process {
    /// Waits (at most `within`) for the process to exit without blocking a concurrency thread;
    /// its exit status.
    public func exited(within timeout: Duration = .seconds(30)) async throws -> Int32 {
        try await withDeadline(timeout, "process \(processIdentifier) to exit") { [self] in
            try await onOwnThread { [self] in
                waitUntilExit()
                return terminationStatus
            }
        }
    }
}
