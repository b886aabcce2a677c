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
            if await mayReach(identity, deviceID: deviceID) { allowed.append(deviceID) } else { refused.append(deviceID) }
        }
        presence.watch(link, deviceIDs: allowed, status: status(of:))
        guard refused.isEmpty else {
            throw SignalingError(.unauthorized, "Not authorized: \(refused.joined(separator: ", "))", requestID: requestID)
        }
    }
}
