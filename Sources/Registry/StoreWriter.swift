/// Audit events and device sightings written to the store in batches, off the message path.
import Foundation
import Logging
import ServiceLifecycle
import Synchronization

/// Writes the relay's events (session audit, device sightings) to the store in batches: one
/// transaction every `interval`, so recording an event is an append under a lock and the store
/// never sits on a caller's path. A crash loses at most the events of the batch not yet
/// committed (one `interval`). The queue is bounded: past `capacity` waiting events the oldest
/// are dropped and counted, so a store that stops accepting writes cannot grow the relay.
public final class StoreWriter: Service, Sendable {
    private struct Queue {
        var events: [StoreEvent] = []
        var dropped = 0
        /// The last flush failed (the store is unusable, for `/readyz`).
        var failing: String?
    }

    private let store: any RelayRegistry
    private let interval: Duration
    private let capacity: Int
    private let logger: Logger
    private let queue = Mutex(Queue())

    public init(store: any RelayRegistry, interval: Duration = .milliseconds(100), capacity: Int = 100_000, logger: Logger) {
        self.store = store
        self.interval = interval
        self.capacity = capacity
        self.logger = logger
    }

    /// Queues an event for the next batch; never waits.
    public func record(_ event: StoreEvent) {
        queue.withLock { queue in
            if queue.events.count >= capacity {
                queue.events.removeFirst(queue.events.count - capacity + 1)
                queue.dropped += 1
            }
            queue.events.append(event)
        }
    }

    /// Events dropped because the queue was full, since start.
    public var droppedEvents: Int { queue.withLock { $0.dropped } }

    /// Why the last batch could not be written, or nil when it was.
    public var failure: String? { queue.withLock { $0.failing } }

    public func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.interval) }
            await flush()
        }
        // What the shutdown recorded (sessions closed `shutdown`) goes out last.
        await flush()
    }

    /// Writes what is queued in one transaction. A failed batch goes back to the front of the
    /// queue (within the bound) for the next try.
    public func flush() async {
        let batch = queue.withLock { queue in
            defer { queue.events.removeAll(keepingCapacity: true) }
            return queue.events
        }
        guard !batch.isEmpty else { return }
        do {
            try await store.apply(batch)
            queue.withLock { $0.failing = nil }
        } catch {
            logger.error("Writing to the store failed; will retry", metadata: ["store.events": "\(batch.count)", "error": "\(error)"])
            queue.withLock { queue in
                queue.failing = error.description
                let kept = Array(batch.suffix(max(0, capacity - queue.events.count)))
                queue.dropped += batch.count - kept.count
                queue.events.insert(contentsOf: kept, at: 0)
            }
        }
    }
}
