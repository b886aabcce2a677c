/// Presence on the switchboard: an app watches the devices it may reach.
import DeviceAuth
import Foundation
import Logging
import NIOCore
import NIOPosix
import Registry
import RelayCore
import TURNBroker

extension Switchboard {
    /// Contract §8: `device_status` now and on every change, for the devices the user may
    /// reach; the others are named in one `unauthorized` error.
    func watch(_ deviceIDs: [String], from link: Link, requestID: String?) async throws(SignalingError) {
        guard link.party == .app, let identity = link.appIdentity else {
            throw SignalingError(.badRequest, "watch is for apps", requestID: requestID)
        }
        var allowed: [String] = []
        var refused: [String] = []
        for deviceID in Set(deviceIDs).sorted() {
            if try await mayReach(identity, deviceID: deviceID, requestID: requestID) { allowed.append(deviceID) } else { refused.append(deviceID) }
        }
        let statuses = await statuses(of: allowed)
        presence.watch(link, deviceIDs: allowed) { statuses[$0] ?? .init(online: false, sessions: 0) }
        guard refused.isEmpty else {
            throw SignalingError(.unauthorized, "Not authorized: \(refused.joined(separator: ", "))", requestID: requestID)
        }
    }

    /// Something about `deviceID` may have changed: its watchers hear of it, at once when the
    /// table knows (alone), else when the store tells every node the change is written (a
    /// fleet: `FleetService`), this one included.
    func presenceMayHaveChanged(_ deviceID: String) {
        presence.changed(deviceID) { [table] in table.presenceNow(of: $0) }
    }

    /// Devices' presence as the table knows it (offline when its store does not answer).
    func statuses(of deviceIDs: [String]) async -> [String: PresenceBoard.Status] {
        await table.presence(of: deviceIDs).mapValues(\.status)
    }

    /// Tells watchers of `deviceIDs` (every watched device with `*`) the fleet's current status.
    func refreshPresence(_ deviceIDs: Set<String>) async {
        let watched = presence.watchedDevices
        let devices = deviceIDs.contains("*") ? watched : watched.filter(deviceIDs.contains)
        guard !devices.isEmpty else { return }
        let statuses = await statuses(of: devices)
        for device in devices {
            presence.changed(device) { statuses[$0] ?? .init(online: false, sessions: 0) }
        }
    }
}
