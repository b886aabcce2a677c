/// The node's part in a fleet: reading the messages other nodes queued for its links, and taking over the links of nodes that stopped.
import Logging
import Registry
import RelayCore
import ServiceLifecycle
import Synchronization

/// Links arriving from other nodes (handed over, or taken over from a node that stopped),
/// waiting to be restored by the inbox reader: it restores them between two reads, so the
/// messages it read for them before they arrived (held meanwhile) reach them first and in order.
final class Arrivals: Sendable {
    private let queue = Mutex<(waiting: [(StoredLiveState, CheckedContinuation<Bool, Never>)], closed: Bool)>(([], false))
    let signal = WakeSignal()

    /// Returns once the inbox reader restored `state`: true, or false when the reader stopped
    /// (the caller restores it itself: no reader races it any more).
    func restore(_ state: StoredLiveState) async -> Bool {
        await withCheckedContinuation { continuation in
            let closed = queue.withLock { queue in
                if !queue.closed { queue.waiting.append((state, continuation)) }
                return queue.closed
            }
            if closed { continuation.resume(returning: false) }
            signal.raise()
        }
    }

    func take() -> [(StoredLiveState, CheckedContinuation<Bool, Never>)] {
        queue.withLock { queue in
            defer { queue.waiting.removeAll() }
            return queue.waiting
        }
    }

    /// The reader stopped: whoever waits, or comes, restores by itself.
    func close() {
        for (_, continuation) in queue.withLock({ queue in
            queue.closed = true
            defer { queue.waiting.removeAll() }
            return queue.waiting
        }) {
            continuation.resume(returning: false)
        }
    }
}

/// Runs a node's two fleet loops. The inbox reader wakes when another node rings (`ring`) and
/// at least every `poll` (a ring is a hint: a missed one costs one poll), and hands what it
/// reads to the switchboard in the order it was queued. The watcher looks every `heartbeat`
/// for nodes that stopped (a graceful stop, a kill, a hang) and takes their links over: their
/// clients resume here, their sessions go on.
final class FleetService: Service, Sendable {
    /// This node's part in the fleet.
    private let node: FleetSessionTable
    private let switchboard: Switchboard
    private let heartbeat: Duration
    private let poll: Duration
    private let logger: Logger
    private let bell = WakeSignal()

    init(node: FleetSessionTable, switchboard: Switchboard, heartbeat: Duration, poll: Duration = .milliseconds(250), logger: Logger) {
        self.node = node
        self.switchboard = switchboard
        self.heartbeat = heartbeat
        self.poll = poll
        self.logger = logger
    }

    /// Another node queued messages for this node's links.
    func ring() {
        bell.raise()
    }

    private let changedDevices = Mutex<Set<String>>([])
    private let presenceBell = WakeSignal()

    /// A device's presence may have changed somewhere in the fleet (`*`: anything may have).
    func presenceChanged(_ deviceID: String) {
        changedDevices.withLock { _ = $0.insert(deviceID) }
        presenceBell.raise()
    }

    func run() async throws {
        await withTaskGroup(of: Void.self) { group in
            group.addTask { await self.readInbox() }
            group.addTask { await self.watchNodes() }
            group.addTask { await self.tellWatchers() }
            await group.waitForAll()
        }
    }

    /// Watchers on this node hear of changes anywhere in the fleet: on each announcement, and
    /// every 5 s for every watched device (an announcement is a hint, as the doorbell is).
    private func tellWatchers() async {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            let rung = (try? await cancelWhenGracefulShutdown { await self.presenceBell.wait(atMost: .seconds(5)) }) ?? true
            if !rung { changedDevices.withLock { _ = $0.insert("*") } }
            let devices = changedDevices.withLock { devices in
                defer { devices.removeAll() }
                return devices
            }
            await switchboard.refreshPresence(devices)
        }
    }

    /// Reads the inbox until the service stops; what a message sent through another node
    /// leaves to await (a session request waiting for its ICE servers) runs as a child task
    /// of the reader.
    private func readInbox() async {
        await withDiscardingTaskGroup { group in await readInbox(into: &group) }
    }

    private func readInbox(into group: inout DiscardingTaskGroup) async {
        var failing = false
        // Messages for links not here (yet): held a few seconds for a link on its way.
        var strays: [String: (since: ContinuousClock.Instant, rows: [RemoteDelivery])] = [:]
        // Rows taken since the inbox was last tidied, and when that was.
        var taken = 0
        var tidied = ContinuousClock.now
        var released = ContinuousClock.now
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            await rungOrPolled()
            if taken > 0, ContinuousClock.now - tidied >= .seconds(1) {
                try? await node.store.tidyInbox()
                (taken, tidied) = (0, .now)
            }
            if ContinuousClock.now - released >= .seconds(10) {
                released = .now
                if let count = try? await node.store.releaseStaleInbox(after: .seconds(30)), count > 0 {
                    logger.warning("Messages taken from the inbox but never delivered are taken again", metadata: ["messages": "\(count)"])
                }
            }
            do {
                var rows: [RemoteDelivery]
                repeat {
                    await arrive(&strays, &group)
                    rows = try await node.store.takeInbox(limit: 1000)
                    taken += rows.count
                    for stray in await switchboard.deliver(rows, in: node, beside: { work in group.addTask { await work() } }) {
                        strays[stray.linkID, default: (.now, [])].rows.append(stray)
                    }
                } while rows.count == 1000
                await arrive(&strays, &group)
                if failing { logger.info("Reading messages from other nodes works again") }
                failing = false
            } catch {
                if !failing { logger.error("Reading messages from other nodes failed; will retry", metadata: ["error": "\(error)"]) }
                failing = true
            }
            for (id, held) in strays where ContinuousClock.now - held.since >= .seconds(5) {
                logger.warning("Dropped messages for a link that never arrived", metadata: ["link.id": "\(id)", "messages": "\(held.rows.count)"])
                switchboard.dropStrays(held.rows, in: node)
                strays[id] = nil
            }
        }
        await arrive(&strays, &group)
        node.arrivals.close()
    }

    /// Restores the links that arrived, then hands them what was read for them before (a
    /// request for one from another node included: it moves on at once).
    private func arrive(
        _ strays: inout [String: (since: ContinuousClock.Instant, rows: [RemoteDelivery])],
        _ group: inout DiscardingTaskGroup
    ) async {
        for (state, continuation) in node.arrivals.take() {
            let restored = switchboard.restore(state)
            if restored.links > 0 {
                logger.info("Links arrived from other nodes", metadata: ["links": "\(restored.links)", "sessions": "\(restored.sessions)"])
            }
            for link in state.links {
                guard let held = strays.removeValue(forKey: link.id) else { continue }
                _ = await switchboard.deliver(held.rows, in: node, beside: { work in group.addTask { await work() } })
            }
            continuation.resume(returning: true)
        }
    }

    /// Returns when rung, when links arrive, or after `poll`, whichever is first.
    private func rungOrPolled() async {
        try? await cancelWhenGracefulShutdown { [poll, bell, node] in
            await withTaskGroup(of: Void.self) { group in
                group.addTask { await bell.wait() }
                group.addTask { await node.arrivals.signal.wait() }
                group.addTask { try? await Task.sleep(for: poll) }
                await group.next()
                group.cancelAll()
            }
        }
    }

    private func watchNodes() async {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.heartbeat) }
            guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return }
            do {
                let taken = try await node.store.takeOverStoppedNodes()
                guard !taken.links.isEmpty else { continue }
                logger.warning("Taking over the links of a node that stopped", metadata: ["links": "\(taken.links.count)"])
                await switchboard.arrive(taken, in: node)
            } catch {
                logger.debug("Looking for stopped nodes failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
