/// Bounds any wait of a test: a lost wakeup fails that test instead of freezing the whole run.
import Synchronization

/// Runs `body` and returns its result, or throws `TimedOut` after `timeout`, or
/// `CancellationError` as soon as the caller is cancelled (a test's time limit), without
/// waiting for `body` to notice: a wait that cannot be cancelled (a promise, a continuation, a
/// child process) is left behind instead of holding the test, and through it the run.
public func withDeadline<T: Sendable>(
    _ timeout: Duration,
    _ what: @autoclosure () -> String,
    _ body: @escaping @Sendable () async throws -> T
) async throws -> T {
    let race = DeadlineRace<T>()
    let what = what()
    return try await withTaskCancellationHandler {
        try await withCheckedThrowingContinuation { continuation in
            race.start(
                continuation,
                work: Task {
                    do { race.finish(.success(try await body())) } catch { race.finish(.failure(error)) }
                },
                timer: Task {
                    guard (try? await Task.sleep(for: timeout)) != nil else { return }
                    race.finish(.failure(TimedOut(what: "\(what) (\(timeout))")))
                }
            )
        }
    } onCancel: {
        race.finish(.failure(CancellationError()))
    }
}

/// The first of the work, the timer and a cancellation to finish resumes the waiter; the
/// others are cancelled.
private final class DeadlineRace<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        var outcome: Result<T, any Error>?
        var tasks: [Task<Void, Never>] = []
    }

    private let state = Mutex(State())

    func start(_ continuation: CheckedContinuation<T, any Error>, work: Task<Void, Never>, timer: Task<Void, Never>) {
        let early: Result<T, any Error>? = state.withLock { state in
            if let outcome = state.outcome { return outcome }
            state.continuation = continuation
            state.tasks = [work, timer]
            return nil
        }
        guard let early else { return }
        work.cancel()
        timer.cancel()
        continuation.resume(with: early)
    }

    func finish(_ result: Result<T, any Error>) {
        let (continuation, tasks): (CheckedContinuation<T, any Error>?, [Task<Void, Never>]) = state.withLock { state in
            guard state.outcome == nil else { return (nil, []) }
            state.outcome = result
            defer {
                state.continuation = nil
                state.tasks = []
            }
            return (state.continuation, state.tasks)
        }
        for task in tasks { task.cancel() }
        continuation?.resume(with: result)
    }
}
