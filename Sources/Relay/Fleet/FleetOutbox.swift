/// Messages for links other nodes serve, written to the fleet's store in batches behind the traffic.
import Logging
import Registry
import RelayCore
import ServiceLifecycle
import Synchronization

/// The node's queue of messages for links other nodes serve. Routing appends and returns; a
/// writer writes whatever gathered while the previous write was under way, one write at a
/// time (so one node's messages are written, and read, in the order they were sent). While the
/// store refuses writes, messages wait (at most `capacity`; past it the oldest are dropped and
/// counted) and the writer tries again, backing off up to 5 s.
final class FleetOutbox: Service, Sendable {
    private struct Pending {
        var rows: [RemoteDelivery] = []
        var dropped = 0
        var failures = 0
        var failing: String?
        /// Messages queued since start, and of those the ones written or dropped.
        var queued = 0
        var done = 0
        /// Who waits for everything queued before a point (that point's `queued`) to be done.
        var waiting: [(id: Int, upTo: Int, continuation: CheckedContinuation<Void, Never>)] = []
        var waiters = 0

        /// `count` more messages are done; returns whoever waited for them.
        mutating func finish(_ count: Int) -> [CheckedContinuation<Void, Never>] {
            done += count
            let ready = waiting.filter { $0.upTo <= done }.map(\.continuation)
            waiting.removeAll { $0.upTo <= done }
            return ready
        }
    }

    private let store: any FleetStore
    private let capacity: Int
    private let logger: Logger
    private let pending = Mutex(Pending())
    private let wake = WakeSignal()

    init(store: any FleetStore, capacity: Int = 100_000, logger: Logger) {
        self.store = store
        self.capacity = capacity
        self.logger = logger
    }

    func send(_ delivery: RemoteDelivery) {
        let ready = pending.withLock { pending -> [CheckedContinuation<Void, Never>] in
            pending.rows.append(delivery)
            pending.queued += 1
            guard pending.rows.count > capacity else { return [] }
            pending.rows.removeFirst()
            pending.dropped += 1
            return pending.finish(1)
        }
        for continuation in ready { continuation.resume() }
        wake.raise()
    }

    /// Returns once every message queued before the call is written (or dropped), or after
    /// `bound` while the store refuses them. A link handed to another node waits for this
    /// first: what its client sent here reaches the other party before what it sends there.
    func written(within bound: Duration = .seconds(2)) async {
        _ = await firstToFinish(timeout: bound) { await self.queuedSoFarDone() }
    }

    /// Returns once every message queued before the call is written or dropped, or on cancellation.
    private func queuedSoFarDone() async {
        let id = pending.withLock { pending in
            pending.waiters += 1
            return pending.waiters
        }
        await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = pending.withLock { pending in
                    if pending.done >= pending.queued || Task.isCancelled { return true }
                    pending.waiting.append((id, pending.queued, continuation))
                    return false
                }
                if ready { continuation.resume() }
            }
        } onCancel: {
            pending.withLock { pending in
                pending.waiting.firstIndex { $0.id == id }.map { pending.waiting.remove(at: $0).continuation }
            }?.resume()
        }
    }

    /// Messages dropped because the store refused them for too long, since start.
    var droppedMessages: Int { pending.withLock { $0.dropped } }

    /// Why the last write failed, or nil when it succeeded.
    var failure: String? { pending.withLock { $0.failing } }

    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { await self.rows() }
            let failures = pending.withLock { $0.failures }
            if failures > 0 {
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: min(.milliseconds(5) * (1 << min(failures, 10)), .seconds(5))) }
            }
            await flush()
        }
        // What is queued goes before the node leaves the fleet (which stops after this).
        await flush()
    }

    private func rows() async {
        if pending.withLock({ !$0.rows.isEmpty }) { return }
        await wake.wait()
    }

    private func flush() async {
        let rows = pending.withLock { pending in
            defer { pending.rows.removeAll(keepingCapacity: true) }
            return pending.rows
        }
        guard !rows.isEmpty else { return }
        do {
            try await store.send(rows)
            let (recovered, ready) = pending.withLock { pending in
                defer {
                    pending.failures = 0
                    pending.failing = nil
                }
                return (pending.failures > 0, pending.finish(rows.count))
            }
            for continuation in ready { continuation.resume() }
            if recovered { logger.info("Sending messages to other nodes works again") }
        } catch {
            let (first, ready) = pending.withLock { pending in
                pending.rows = rows + pending.rows
                var ready: [CheckedContinuation<Void, Never>] = []
                if pending.rows.count > capacity {
                    let over = pending.rows.count - capacity
                    pending.dropped += over
                    pending.rows.removeFirst(over)
                    ready = pending.finish(over)
                }
                pending.failures += 1
                pending.failing = error.description
                return (pending.failures == 1, ready)
            }
            for continuation in ready { continuation.resume() }
            if first { logger.error("Sending messages to other nodes failed; will retry", metadata: ["messages": "\(rows.count)", "error": "\(error)"]) }
        }
    }
}
