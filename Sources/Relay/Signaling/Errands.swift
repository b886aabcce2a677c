/// Work the relay does off a caller's path, as child tasks of one service.
import ServiceLifecycle

/// What the relay does off a caller's path: a session request waiting for its ICE servers, the
/// slow half of a message on its socket's event loop, revoking a closed session's credentials,
/// refreshing an open one's. Each runs as a child task of this one service, so none outlives
/// the relay: the service stops after every service started after it (the server, the drain),
/// and then cancels what is still running (a libcurl call aborts its transfer; a store call
/// has its own deadline) and waits for it.
final class Errands: Service, Sendable {
    private struct Errand: Sendable {
        let executor: (any TaskExecutor)?
        let work: @Sendable () async -> Void
    }

    private let queued: AsyncStream<Errand>
    private let queue: AsyncStream<Errand>.Continuation

    init() {
        (queued, queue) = AsyncStream.makeStream(of: Errand.self)
    }

    /// Runs `work` beside the caller, on `executor` when given (a socket's event loop: what the
    /// work does between its waits costs no hop). Once the service stopped, nothing runs.
    func run(on executor: (any TaskExecutor)? = nil, _ work: @escaping @Sendable () async -> Void) {
        queue.yield(Errand(executor: executor, work: work))
    }

    func run() async {
        await withGracefulShutdownHandler {
            await withDiscardingTaskGroup { group in
                // One hop per errand: the queue's own iterator (what is queued before the
                // shutdown still starts, and is cancelled with the rest).
                for await errand in queued {
                    group.addTask(executorPreference: errand.executor) { await errand.work() }
                }
                group.cancelAll()
            }
        } onGracefulShutdown: {
            self.queue.finish()
        }
    }
}
