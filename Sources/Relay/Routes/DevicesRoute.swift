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

    var routes: RouteCollection<RelayRequestContext> {
        RouteCollection(context: RelayRequestContext.self).get("/api/devices", use: respond)
    }

    @Sendable func respond(_ request: Request, context: RelayRequestContext) async throws -> Response {
        let identity = try await authenticator.app(request, logger: context.logger)
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
        let views = await switchboard.presenceViews(of: Array(reachable), entries: registered)
        return .json(.object(["devices": .array(reachable.sorted().compactMap { views[$0] })]))
    }
}

extension Switchboard {
    /// Devices as `GET /api/devices` and the admin API show them (presence as the table knows it).
    func presenceViews(of deviceIDs: [String], entries: [String: DeviceEntry]) async -> [String: JSONValue] {
        let found = await table.presence(of: deviceIDs)
        var views: [String: JSONValue] = [:]
        for deviceID in deviceIDs {
            let status = found[deviceID]?.status ?? .init(online: false, sessions: 0)
            let capabilities = found[deviceID]?.capabilities ?? presence.sighting(deviceID)?.capabilities
            let entry = entries[deviceID]
            let lastSeen = status.online ? Date() : [presence.sighting(deviceID)?.lastSeenAt, entry?.lastSeenAt].compactMap { $0 }.max()
            var fields: [String: JSONValue] = [
                "device_id": .string(deviceID),
                "online": .bool(status.online),
                "sessions": .int(status.sessions),
                "last_seen_at": .time(lastSeen),
                "capabilities": capabilities ?? .null,
            ]
            if let entry { fields["label"] = .string(entry.label) }
            views[deviceID] = .object(fields)
        }
        return views
    }
}
