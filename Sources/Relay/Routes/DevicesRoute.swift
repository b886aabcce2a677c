/// `GET /api/devices`: the devices a user may reach, with presence.
import DeviceAuth
import Foundation
import Hummingbird
import Logging
import Registry
import RelayCore

/// `GET /api/devices` (contract §8): the devices the user may reach (registry owners and the
/// token's `devices` claim), with presence.
struct DevicesRoute: Sendable {
    let authenticator: ClientAuthenticator
    let store: any RelayRegistry
    let switchboard: Switchboard

    @Sendable func respond(_ request: Request, context: RelayRequestContext) async throws -> Response {
        let identity = try authenticator.app(request, logger: context.logger)
        let entries: [DeviceEntry]
        do {
            let owned = try await store.devices(ownedBy: identity.userID)
            let claimed = try await store.devices(Array(identity.devices ?? []))
            entries = owned + claimed
        } catch {
            context.logger.error("Device registry unavailable", metadata: ["error": "\(error)"])
            throw RelayHTTPError(.serviceUnavailable, "Device registry unavailable", headers: [.retryAfter: "5"])
        }
        var registered: [String: DeviceEntry] = [:]
        for entry in entries { registered[entry.deviceID] = entry }
        // Claimed devices without a registry row are master-key devices; revoked ones are left out.
        let reachable = Set(registered.keys).union(identity.devices ?? []).filter { registered[$0]?.revoked != true }
        let devices = reachable.sorted().map { deviceID in
            switchboard.presenceView(of: deviceID, entry: registered[deviceID])
        }
        return .json(.object(["devices": .array(devices)]))
    }
}

extension Switchboard {
    /// One device as `GET /api/devices` and the admin API show it.
    func presenceView(of deviceID: String, entry: DeviceEntry?) -> JSONValue {
        let status = status(of: deviceID)
        let sighting = presence.sighting(deviceID)
        let lastSeen = status.online ? Date() : [sighting?.lastSeenAt, entry?.lastSeenAt].compactMap { $0 }.max()
        var fields: [String: JSONValue] = [
            "device_id": .string(deviceID),
            "online": .bool(status.online),
            "sessions": .int(status.sessions),
            "last_seen_at": .time(lastSeen),
            "capabilities": sighting?.capabilities ?? .null,
        ]
        if let entry { fields["label"] = .string(entry.label) }
        return .object(fields)
    }
}
