/// Who watches which device, last-seen times and capabilities, and sending `device_status` on changes.
import Foundation
import RelayCore

/// Contract §8: which app links watch which devices, and `device_status` to them at once and on
/// every change of a device's presence (online, number of open sessions). It also remembers
/// when each device was last seen and what it last said of itself (`device_info`) while this
/// relay runs.
final class PresenceBoard: Sendable {
    struct Status: Sendable, Equatable {
        var online: Bool
        var sessions: Int
    }

    /// What a device last showed this relay.
    struct Sighting: Sendable {
        var lastSeenAt: Date
        var capabilities: JSONValue?
    }

    private struct Watchers: Sendable {
        var links: [ObjectIdentifier: Link] = [:]
        /// The status last sent, so watchers hear of changes only.
        var last: Status
    }

    private let watchers = ShardedMap<String, Watchers>()
    private let sightings = ShardedMap<String, Sighting>()

    /// Makes `deviceIDs` the devices `link` watches (replacing what it watched before) and sends
    /// it each one's status at once.
    func watch(_ link: Link, deviceIDs: [String], status: (String) -> Status) {
        let previous = link.replaceWatched(with: Set(deviceIDs))
        stopWatching(previous.subtracting(deviceIDs), by: link)
        for deviceID in deviceIDs {
            // Under the device's shard lock, so no change can slip between reading and sending.
            watchers.update(deviceID) { entry in
                let current = status(deviceID)
                if entry == nil { entry = Watchers(last: current) }
                entry?.links[ObjectIdentifier(link)] = link
                send(current, of: deviceID, to: link)
            }
        }
    }

    /// Every device some link watches.
    var watchedDevices: [String] { watchers.keys }

    /// Forgets an ended link's watches.
    func unwatch(_ link: Link) {
        stopWatching(link.replaceWatched(with: []), by: link)
    }

    private func stopWatching(_ deviceIDs: Set<String>, by link: Link) {
        for deviceID in deviceIDs {
            watchers.update(deviceID) { entry in
                entry?.links[ObjectIdentifier(link)] = nil
                if entry?.links.isEmpty == true { entry = nil }
            }
        }
    }

    /// Something about `deviceID` may have changed: its watchers hear the new status if it did
    /// (`status` nil: it is not known here yet, nothing is sent).
    func changed(_ deviceID: String, status: (String) -> Status?) {
        watchers.update(deviceID) { entry in
            guard var current = entry, let now = status(deviceID), now != current.last else { return }
            current.last = now
            for link in current.links.values { send(now, of: deviceID, to: link) }
            entry = current
        }
    }

    private func send(_ status: Status, of deviceID: String, to link: Link) {
        link.send(ServerMessage.deviceStatus(deviceID: deviceID, online: status.online, sessions: status.sessions).outbound)
    }

    // MARK: Sightings

    func seen(_ deviceID: String, at time: Date = Date()) {
        sightings.update(deviceID) { sighting in
            if sighting == nil { sighting = Sighting(lastSeenAt: time) } else { sighting?.lastSeenAt = time }
        }
    }

    func describe(_ deviceID: String, capabilities: JSONValue) {
        sightings.update(deviceID) { sighting in
            if sighting == nil { sighting = Sighting(lastSeenAt: Date()) }
            sighting?.capabilities = capabilities
        }
    }

    func sighting(_ deviceID: String) -> Sighting? {
        sightings[deviceID]
    }
}
