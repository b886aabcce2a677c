/// The node's part in a fleet: reading the messages other nodes queued for its links, and taking over the links of nodes that stopped.
import Logging
import Registry
import ServiceLifecycle
import Synchronization

/// What a node of a fleet needs to reach the others: the shared store, and its outbox.
struct Fleet: Sendable {
    let store: any FleetStore
    let outbox: FleetOutbox
    var node: String { store.node }
}

/// Runs a node's two fleet loops. The inbox reader wakes when another node rings (`ring`) and
/// at least every `poll` (a ring is a hint: a missed one costs one poll), and hands what it
/// reads to the switchboard in the order it was queued. The watcher looks every `heartbeat`
/// for nodes that stopped (a graceful stop, a kill, a hang) and takes their links over: their
/// clients resume here, their sessions go on.
final class FleetService: Service, Sendable {
    private let fleet: Fleet
    private let switchboard: Switchboard
    private let heartbeat: Duration
    private let poll: Duration
    private let logger: Logger
    private let bell = WakeSignal()

    init(fleet: Fleet, switchboard: Switchboard, heartbeat: Duration, poll: Duration = .milliseconds(250), logger: Logger) {
        self.fleet = fleet
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
            let timer = Task {
                guard (try? await Task.sleep(for: .seconds(5))) != nil else { return }
                self.presenceChanged("*")
            }
            try? await cancelWhenGracefulShutdown { await self.presenceBell.wait() }
            timer.cancel()
            let devices = changedDevices.withLock { devices in
                defer { devices.removeAll() }
                return devices
            }
            await switchboard.refreshPresence(devices)
        }
    }

    private func readInbox() async {
        var failing = false
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            await rungOrPolled()
            do {
                var rows: [RemoteDelivery]
                repeat {
                    rows = try await fleet.store.takeInbox(limit: 1000)
                    await switchboard.deliver(rows)
                } while rows.count == 1000
                if failing { logger.info("Reading messages from other nodes works again") }
                failing = false
            } catch {
                if !failing { logger.error("Reading messages from other nodes failed; will retry", metadata: ["error": "\(error)"]) }
                failing = true
            }
        }
    }

    /// Returns when rung, or after `poll`.
    private func rungOrPolled() async {
        let timer = Task { [poll, bell] in
            guard (try? await Task.sleep(for: poll)) != nil else { return }
            bell.raise()
        }
        defer { timer.cancel() }
        try? await cancelWhenGracefulShutdown { await self.bell.wait() }
    }

    private func watchNodes() async {
        while !Task.isShuttingDownGracefully, !Task.isCancelled {
            try? await cancelWhenGracefulShutdown { try await Task.sleep(for: self.heartbeat) }
            guard !Task.isShuttingDownGracefully, !Task.isCancelled else { return }
            do {
                let taken = try await fleet.store.takeOverStoppedNodes()
                guard !taken.links.isEmpty else { continue }
                let restored = switchboard.restore(taken)
                logger.warning(
                    "Took over the links of a node that stopped",
                    metadata: ["links": "\(restored.links)", "sessions": "\(restored.sessions)"]
                )
            } catch {
                logger.debug("Looking for stopped nodes failed", metadata: ["error": "\(error)"])
            }
        }
    }
}
