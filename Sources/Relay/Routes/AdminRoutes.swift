/// The admin API behind `RELAY_ADMIN_TOKEN`: devices and sessions for operators.
import DeviceAuth
import Foundation
import Hummingbird
import Logging
import OpenSSLCrypto
import Registry
import RelayCore

/// `/admin/*` (contract §1.4, §9): operators list, add and revoke devices, list live sessions
/// and end one. Every route needs `Authorization: Bearer <RELAY_ADMIN_TOKEN>`; the relay mounts
/// them only when that token is set (otherwise they answer 404 like any unknown path).
struct AdminRoutes: Sendable {
    let token: String
    let store: any RelayRegistry
    let switchboard: Switchboard

    func register(on router: Router<RelayRequestContext>) {
        let admin = router.group("admin")
        admin.get("devices") { request, context -> Response in
            try authorize(request)
            return .json(.object(["devices": .array(try await storeCall { () async throws(StoreError) in try await store.devices() }.map(view))]))
        }
        admin.post("devices") { request, context -> Response in
            try authorize(request)
            return try await add(request, context: context)
        }
        admin.get("devices/:id") { request, context -> Response in
            try authorize(request)
            return .json(.object(["device": view(try await entry(context))]))
        }
        admin.delete("devices/:id") { request, context -> Response in
            try authorize(request)
            let deviceID = try await entry(context).deviceID
            let revoked = try await storeCall { () async throws(StoreError) in try await store.revoke(deviceID, now: Date()) }
            switchboard.revoke(deviceID: deviceID)
            context.logger.info("Device revoked by an operator", metadata: ["device.id": "\(deviceID)"])
            return .json(.object(["device": revoked.map(view) ?? .null]))
        }
        admin.get("sessions") { request, _ -> Response in
            try authorize(request)
            let sessions = switchboard.table.allSessions.sorted { $0.createdAt < $1.createdAt }
            return .json(.object(["sessions": .array(sessions.map(view))]))
        }
        admin.get("sessions/:id") { request, context -> Response in
            try authorize(request)
            return .json(.object(["session": view(try session(context))]))
        }
        admin.delete("sessions/:id") { request, context -> Response in
            try authorize(request)
            let session = try session(context)
            switchboard.close(session, reason: .admin, by: .relay)
            context.logger.info("Session ended by an operator", metadata: ["session.id": "\(session.id)"])
            return .json(.object(["session_id": .string(session.id), "closed": .bool(true)]))
        }
    }

    private func authorize(_ request: Request) throws {
        guard let presented = ClientAuthenticator.bearerToken(in: request, queryParameter: false),
            LibCrypto.constantTimeEquals(Array(presented.utf8), Array(token.utf8))
        else {
            throw RelayHTTPError(.unauthorized, "Admin routes need 'Authorization: Bearer <RELAY_ADMIN_TOKEN>'")
        }
    }

    /// `POST /admin/devices` `{"device_id","owners":[...],"label"}`: 201 with the secret, shown once.
    private func add(_ request: Request, context: RelayRequestContext) async throws -> Response {
        let object = try await request.jsonObject(upTo: 16 * 1024, example: #"{"device_id":"robot-1","owners":["alice"]}"#)
        guard let deviceID = object["device_id"]?.stringValue else { throw RelayHTTPError(.badRequest, "device_id is required") }
        var owners: [String] = []
        if let value = object["owners"] {
            guard case .array(let values) = value, let names = Optional(values.compactMap(\.stringValue)), names.count == values.count,
                names.allSatisfy({ !$0.isEmpty && $0.utf8.count <= 256 })
            else {
                throw RelayHTTPError(.badRequest, "owners must be an array of user ids")
            }
            owners = names
        }
        let label = object["label"]?.stringValue ?? ""
        guard label.utf8.count <= 256 else { throw RelayHTTPError(.badRequest, "label must be at most 256 bytes") }
        let (entry, secret) = try await storeCall { () async throws(StoreError) in try await store.addDevice(deviceID, owners: owners, label: label, now: Date()) }
        context.logger.info("Device added by an operator", metadata: ["device.id": "\(deviceID)"])
        return .json(.object(["device": view(entry), "secret": .string(secret)]), status: .created)
    }

    private func entry(_ context: RelayRequestContext) async throws -> DeviceEntry {
        let deviceID = context.parameters.get("id") ?? ""
        guard let entry = try await storeCall({ () async throws(StoreError) in try await store.device(entry: deviceID) }) else {
            throw RelayHTTPError(.notFound, "No device '\(deviceID.prefix(128))' in the registry")
        }
        return entry
    }

    private func session(_ context: RelayRequestContext) throws -> Session {
        guard let id = context.parameters.get("id"), let session = switchboard.table.session(id) else {
            throw RelayHTTPError(.notFound, "No live session with that id")
        }
        return session
    }

    /// Store errors as HTTP answers.
    private func storeCall<T>(_ body: () async throws(StoreError) -> T) async throws(RelayHTTPError) -> T {
        do {
            return try await body()
        } catch {
            switch error.kind {
            case .deviceExists: throw RelayHTTPError(.conflict, error.description)
            case .unknownDevice: throw RelayHTTPError(.notFound, error.description)
            case .invalidDeviceID: throw RelayHTTPError(.badRequest, error.description)
            case .unusable: throw RelayHTTPError(.serviceUnavailable, "Store unavailable", headers: [.retryAfter: "5"])
            }
        }
    }

    /// A device for operators: the registry row and presence, never a secret.
    private func view(_ entry: DeviceEntry) -> JSONValue {
        guard case .object(var fields) = switchboard.presenceView(of: entry.deviceID, entry: entry) else { return .null }
        fields["owners"] = .array(entry.owners.map(JSONValue.string))
        fields["revoked"] = .bool(entry.revoked)
        fields["revoked_at"] = .time(entry.revokedAt)
        fields["created_at"] = .time(entry.createdAt)
        fields["secrets"] = .int(entry.secrets.count)
        return .object(fields)
    }

    private func view(_ session: Session) -> JSONValue {
        .object([
            "session_id": .string(session.id),
            "user_id": .string(session.userID),
            "device_id": .string(session.deviceID),
            "created_at": .time(session.createdAt),
            "phase": .string(session.currentPhase == .open ? "open" : "reserved"),
            "answered": .bool(session.isAnswered),
        ])
    }
}
