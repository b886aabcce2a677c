/// Wakes a service's loop that sleeps until there is work: raised from any thread, awaited by the loop.
import Synchronization

/// A flag that wakes one waiting loop: `raise` (from any thread, any number of times) makes the
/// loop's next or current `wait` return; a loop that checks its work, finds none and waits never
/// misses a raise that came in between. Cancelling the waiting task wakes it too (without
/// raising the flag).
public final class WakeSignal: Sendable {
    private let state = Mutex<(raised: Bool, waiter: CheckedContinuation<Void, Never>?)>((false, nil))

    public init() {}

    public func raise() {
        state.withLock { state in
            state.raised = true
            defer { state.waiter = nil }
            return state.waiter
        }?.resume()
    }

    /// Returns once raised since the last `wait` returned (or on cancellation).
    public func wait() async {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let ready = state.withLock { state in
                    if state.raised {
                        state.raised = false
                        return true
                    }
                    // Cancelled: returns, and a raise still to come is the next wait's.
                    if Task.isCancelled { return true }
                    state.waiter = continuation
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            // Wakes the waiter without leaving the flag raised for the next wait.
            state.withLock { state in
                defer { state.waiter = nil }
                return state.waiter
            }?.resume()
        }
    }
}

extension WakeSignal {
    /// Returns once raised, or after `timeout`: true when it was raised.
    public func wait(atMost timeout: Duration) async -> Bool {
        await firstToFinish(timeout: timeout) { await self.wait() }
    }
}

/// Runs `operation` for at most `timeout` as a child task: true when it finished first, false
/// when the time ran out (it is then cancelled, and must return promptly when cancelled).
public func firstToFinish(timeout: Duration, _ operation: @escaping @Sendable () async -> Void) async -> Bool {
    await withTaskGroup(of: Bool.self) { group in
        group.addTask {
            await operation()
            return true
        }
        group.addTask {
            try? await Task.sleep(for: timeout)
            return false
        }
        let first = await group.next() ?? false
        group.cancelAll()
        return first
    }
}
