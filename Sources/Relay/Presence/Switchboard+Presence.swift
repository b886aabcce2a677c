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

    /// Something about `deviceID` may have changed: its watchers hear of it. In a fleet the
    /// store tells every node once the change is written (`FleetService`), this one included.
    func presenceMayHaveChanged(_ deviceID: String) {
        guard table.fleet == nil else { return }
        presence.changed(deviceID, status: status(of:))
    }

    /// Devices' presence: this node's, or in a fleet the fleet's (offline when the store does
    /// not answer).
    func statuses(of deviceIDs: [String]) async -> [String: PresenceBoard.Status] {
        guard let fleet = table.fleet else {
            return Dictionary(uniqueKeysWithValues: deviceIDs.map { ($0, status(of: $0)) })
        }
        let presence = (try? await fleet.store.presence(of: deviceIDs)) ?? [:]
        return presence.mapValues { PresenceBoard.Status(online: $0.online, sessions: $0.sessions) }
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
