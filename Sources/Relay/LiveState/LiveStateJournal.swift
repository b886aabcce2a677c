/// Writes the live links, their kept messages and the open sessions to the store behind the traffic, so the next process takes them over.
import Logging
import Registry
import RelayCore
import ServiceLifecycle
import Synchronization

/// Keeps the store's copy of the live state (contract §11) close behind memory: links and
/// sessions that changed say so once (`linkChanged`, `sessionChanged`), and every `interval`
/// the journal asks each of them what the store lacks and writes it in one transaction. A
/// message acked before its link's turn is never written at all, so routing pays a flag check
/// per message. A kill loses at most one `interval` of changes; a graceful stop writes
/// everything (`flush` after the drain).
///
/// Bounds: changed links and sessions are each listed once per interval; batches that failed
/// to write wait for the next try, at most `capacity` rows of them (past that the oldest batch
/// is dropped and counted: a store that stops accepting writes cannot grow the relay).
final class LiveStateJournal: Service, Sendable {
    private struct Pending {
        var links: [Link] = []
        var sessions: [Session] = []
        /// Sessions that ended without an object to ask (dropped while restoring).
        var endedSessions: [String] = []
        var failed: [LiveStateBatch] = []
        /// The `cseq` marks of the failed batches: acked once they are written.
        var failedMarks: [(Link, Int)] = []
        /// Messages from the fleet's inbox delivered since the last flush (their seqs).
        var inboxDone: [Int64] = []
        /// Links whose ack was due at the last write: written on its own at the next one if
        /// no frame took it meanwhile (on a busy link, acks ride with the traffic).
        var acksDue: [Link] = []
        var dropped = 0
        var failing: String?
        /// The next flush replaces the outbox log with a snapshot (the first one of a process
        /// does: what a killed one left may end in a torn record).
        var snapshotDue = true
        /// Bytes of kept messages in the last snapshot.
        var snapshotBytes = 0
        /// Something is listed since the last flush.
        var changed = false
        /// Failed writes in a row (the next try waits longer: a store that is away is not
        /// hammered, nor the log filled, every interval).
        var failures = 0
    }

    private let store: any LiveStateStore
    /// Every live link, for a snapshot.
    private let links: @Sendable () -> [Link]
    /// Returns once every message routed before the call to another node's links is written (a
    /// fleet's outbox). Awaited before a write that carries `cseq` marks: a mark (which a node
    /// taking the link over trusts as "handled") never gets ahead of what its messages caused.
    private let settled: @Sendable () async -> Void
    let interval: Duration
    private let capacity: Int
    private let logger: Logger
    private let pending = Mutex(Pending())
    /// Wakes the writer, idle until something changes (an idle relay never wakes up for it).
    private let wake = WakeSignal()

    /// The outbox log is replaced by a snapshot once it is past this and four times the last
    /// snapshot (what the links keep is usually far less than what flowed).
    static let compactionBytes = 64 << 20

    init(
        store: any LiveStateStore,
        interval: Duration,
        links: @escaping @Sendable () -> [Link],
        settled: @escaping @Sendable () async -> Void = {},
        capacity: Int = 200_000,
        logger: Logger
    ) {
        self.store = store
        self.links = links
        self.settled = settled
        self.interval = interval
        self.capacity = capacity
        self.logger = logger
    }

    /// `link` has something the store lacks; called once until the journal asks it.
    func linkChanged(_ link: Link) {
        pending.withLock { pending in
            pending.links.append(link)
            pending.changed = true
        }
        wake.raise()
    }

    /// `session` opened, moved a deadline, or closed.
    func sessionChanged(_ session: Session) {
        pending.withLock { pending in
            pending.sessions.append(session)
            pending.changed = true
        }
        wake.raise()
    }

    /// Messages from the fleet's inbox were delivered: the next write holds what they caused,
    /// and deletes them (a node killed before it leaves them to its taker).
    func inboxDelivered(_ seqs: [Int64]) {
        guard !seqs.isEmpty else { return }
        pending.withLock { pending in
            pending.inboxDone += seqs
            pending.changed = true
        }
        wake.raise()
    }

    /// A stored session that no object stands for any more is to be forgotten.
    func sessionEnded(_ sessionID: String) {
        pending.withLock { pending in
            pending.endedSessions.append(sessionID)
            pending.changed = true
        }
        wake.raise()
    }

    /// Batches dropped because the store refused them for too long, since start.
    var droppedBatches: Int { pending.withLock { $0.dropped } }

    /// Why the last write failed, or nil when it succeeded.
    var failure: String? { pending.withLock { $0.failing } }

    /// Writes one `interval` after the first change since the last write (or a failed write).
    func run() async throws {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { await self.changes() }
            let failures = pending.withLock { $0.failures }
            let wait = failures == 0 ? interval : min(interval * (1 << min(failures, 10)), .seconds(5))
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: wait) }
            await flush()
        }
        // After the drain (the shutdown service stops first): everything, for the next process.
        await flush()
        if let failure {
            logger.error("The live links and sessions could not be written for the next process", metadata: ["error": "\(failure)"])
        } else {
            logger.info("Live links and sessions written for the next process")
        }
    }

    /// Returns once something waits to be written (or the task is cancelled).
    private func changes() async {
        if pending.withLock({ $0.changed || !$0.failed.isEmpty || $0.snapshotDue || !$0.acksDue.isEmpty }) { return }
        await wake.wait()
    }

    /// Writes what changed since the last flush (only `run` calls it: one at a time).
    private func flush() async {
        let (links, sessions, ended, failed, failedMarks, inboxDone, acksDue) = pending.withLock { pending in
            defer {
                pending.inboxDone.removeAll()
                pending.acksDue.removeAll()
                pending.changed = false
                pending.links.removeAll(keepingCapacity: true)
                pending.sessions.removeAll(keepingCapacity: true)
                pending.endedSessions.removeAll()
                pending.failed.removeAll()
                pending.failedMarks.removeAll()
            }
            return (pending.links, pending.sessions, pending.endedSessions, pending.failed, pending.failedMarks, pending.inboxDone, pending.acksDue)
        }
        for link in acksDue { link.writeAck() }
        // Taken with the links and sessions to ask: everything these messages caused was listed
        // before they were reported, so it is in this batch (or an earlier one).
        var batch = LiveStateBatch()
        batch.inboxDone = inboxDone
        var marks = failedMarks
        for link in links {
            if let cseq = link.journal(into: &batch) { marks.append((link, cseq)) }
        }
        var seen = Set<ObjectIdentifier>()
        for session in sessions where seen.insert(ObjectIdentifier(session)).inserted { session.journal(into: &batch) }
        batch.endedSessions += ended
        let logBytes = store.outboxLogBytes
        if pending.withLock({ $0.snapshotDue || (logBytes > Self.compactionBytes && logBytes > 4 * $0.snapshotBytes) }) {
            // After the batch: the snapshot holds everything it has, and what came since.
            var bytes = 0
            batch.snapshot = [:]
            for link in self.links() { bytes += link.snapshot(into: &batch) }
            pending.withLock { pending in
                pending.snapshotDue = false
                pending.snapshotBytes = bytes
            }
        }
        let batches = batch.isEmpty ? failed : failed + [batch]
        guard !batches.isEmpty else { return }
        // What the marked messages sent to other nodes is written before the marks are.
        if !batch.marks.isEmpty { await settled() }
        do {
            try await store.save(batches)
            if !marks.isEmpty {
                // Contract §11: the client's messages up to each mark are safe; their acks go.
                let due = marks.compactMap { link, cseq in link.stored(cseq: cseq) ? link : nil }
                if !due.isEmpty { pending.withLock { $0.acksDue += due } }
            }
            let recovered = pending.withLock { pending in
                defer {
                    pending.failing = nil
                    pending.failures = 0
                }
                return pending.failures > 0
            }
            if recovered { logger.info("Writing the live state works again", metadata: ["store.rows": "\(batches.reduce(0) { $0 + $1.count })"]) }
        } catch {
            let first = pending.withLock { pending in
                pending.failing = error.description
                pending.failures += 1
                // The links' marks moved with what they handed over: the retry carries it.
                var kept = batches + pending.failed
                while kept.reduce(0, { $0 + $1.count }) > capacity, kept.count > 1 {
                    kept.removeFirst()
                    pending.dropped += 1
                    // What was dropped is nowhere now: the next write starts from a snapshot.
                    pending.snapshotDue = true
                }
                pending.failed = kept
                pending.failedMarks = marks + pending.failedMarks
                return pending.failures == 1
            }
            if first {
                logger.error("Writing the live state failed; will retry", metadata: ["store.rows": "\(batch.count)", "error": "\(error)"])
            }
        }
    }
}
