/// Messages for links other nodes serve, written to the fleet's store in batches behind the traffic.
import Logging
import Registry
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
        pending.withLock { pending in
            pending.rows.append(delivery)
            if pending.rows.count > capacity {
                pending.rows.removeFirst()
                pending.dropped += 1
            }
        }
        wake.raise()
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
            let recovered = pending.withLock { pending in
                defer {
                    pending.failures = 0
                    pending.failing = nil
                }
                return pending.failures > 0
            }
            if recovered { logger.info("Sending messages to other nodes works again") }
        } catch {
            let first = pending.withLock { pending in
                pending.rows = rows + pending.rows
                if pending.rows.count > capacity {
                    pending.dropped += pending.rows.count - capacity
                    pending.rows.removeFirst(pending.rows.count - capacity)
                }
                pending.failures += 1
                pending.failing = error.description
                return pending.failures == 1
            }
            if first { logger.error("Sending messages to other nodes failed; will retry", metadata: ["messages": "\(rows.count)", "error": "\(error)"]) }
        }
    }
}
