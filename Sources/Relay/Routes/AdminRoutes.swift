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

    /// The routes, mounted at `/admin`; each needs the admin token.
    var routes: RouteCollection<RelayRequestContext> {
        let admin = RouteCollection(context: RelayRequestContext.self)
        admin.add(middleware: AdminAuthorization(token: token))
        addDeviceRoutes(to: admin)
        addSessionRoutes(to: admin)
        return admin
    }

    /// The registry: list, add, show, revoke or delete, owners, secret rotation.
    private func addDeviceRoutes(to admin: RouteCollection<RelayRequestContext>) {
        admin.get("devices") { _, _ -> Response in
            let entries = try await storeCall { () async throws(StoreError) in try await store.devices() }
            return .json(.object(["devices": .array(await views(entries))]))
        }
        admin.post("devices", use: add)
        admin.get("devices/:id") { _, context -> Response in
            .json(.object(["device": await views([try await entry(context)])[0]]))
        }
        admin.delete("devices/:id") { request, context -> Response in
            let deviceID = try await entry(context).deviceID
            if request.uri.queryParameters.get("purge") == "true" {
                try await storeCall { () async throws(StoreError) in try await store.deleteDevice(deviceID) }
                context.logger.info("Device deleted by an operator", metadata: ["device.id": "\(deviceID)"])
                return .json(.object(["device_id": .string(deviceID), "deleted": .bool(true)]))
            }
            let revoked = try await storeCall { () async throws(StoreError) in try await store.revoke(deviceID, now: Date()) }
            switchboard.revoke(deviceID: deviceID)
            context.logger.info("Device revoked by an operator", metadata: ["device.id": "\(deviceID)"])
            return .json(.object(["device": await views(revoked.map { [$0] } ?? []).first ?? .null]))
        }
        admin.post("devices/:id/owners") { request, context -> Response in
            let deviceID = try await entry(context).deviceID
            let object = try await request.jsonObject(upTo: 4096, example: #"{"owner":"alice"}"#)
            guard let owner = object["owner"]?.stringValue, !owner.isEmpty, owner.utf8.count <= 256 else {
                throw RelayHTTPError(.badRequest, "owner (a user id, the JWT sub) is required")
            }
            let updated = try await storeCall { () async throws(StoreError) in try await store.grant(deviceID, owner: owner) }
            return .json(.object(["device": await views([updated])[0]]))
        }
        admin.delete("devices/:id/owners/:owner") { request, context -> Response in
            let deviceID = try await entry(context).deviceID
            let owner = context.parameters.get("owner") ?? ""
            let updated = try await storeCall { () async throws(StoreError) in try await store.ungrant(deviceID, owner: owner) }
            return .json(.object(["device": await views([updated])[0]]))
        }
        admin.post("devices/:id/rotate") { request, context -> Response in
            let deviceID = try await entry(context).deviceID
            let secret = try await storeCall { () async throws(StoreError) in try await store.rotate(deviceID) }
            context.logger.info("Device secret rotated by an operator", metadata: ["device.id": "\(deviceID)"])
            return .json(.object(["device_id": .string(deviceID), "secret": .string(secret)]))
        }
        admin.post("devices/:id/rotate/finish") { request, context -> Response in
            let deviceID = try await entry(context).deviceID
            try await storeCall { () async throws(StoreError) in try await store.dropPreviousSecret(deviceID) }
            return .json(.object(["device": await views([try await entry(context)])[0]]))
        }
        admin.post("devices/:id/unrevoke") { request, context -> Response in
            let deviceID = try await entry(context).deviceID
            let updated = try await storeCall { () async throws(StoreError) in try await store.unrevoke(deviceID) }
            context.logger.info("Device unrevoked by an operator", metadata: ["device.id": "\(deviceID)"])
            return .json(.object(["device": await views([updated])[0]]))
        }
    }

    /// The audit log, and live sessions: list, show, end.
    private func addSessionRoutes(to admin: RouteCollection<RelayRequestContext>) {
        admin.get("audit") { request, _ in try await audit(request) }
        admin.get("sessions") { _, _ -> Response in
            .json(.object(["sessions": .array(try await sessions(id: nil))]))
        }
        admin.get("sessions/:id") { request, context -> Response in
            guard let session = try await sessions(id: context.parameters.get("id") ?? "").first else {
                throw RelayHTTPError(.notFound, "No live session with that id")
            }
            return .json(.object(["session": session]))
        }
        admin.delete("sessions/:id") { request, context -> Response in
            let id = context.parameters.get("id") ?? ""
            if let session = switchboard.table.session(id), session.keepsTimers {
                switchboard.close(session, reason: .admin, by: .relay)
            } else {
                // Held by another node (the one serving its device): that node ends it.
                let asked = try await storeCall { () async throws(StoreError) in
                    try await switchboard.table.endElsewhere(sessionID: id, reason: .admin)
                }
                guard asked else { throw RelayHTTPError(.notFound, "No live session with that id") }
            }
            context.logger.info("Session ended by an operator", metadata: ["session.id": "\(id)"])
            return .json(.object(["session_id": .string(id), "closed": .bool(true)]))
        }
    }

    /// `POST /admin/devices` `{"device_id","owners":[...],"label"}`: 201 with the secret, shown once.
    @Sendable private func add(_ request: Request, context: RelayRequestContext) async throws -> Response {
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
        return .json(.object(["device": await views([entry])[0], "secret": .string(secret)]), status: .created)
    }

    private func entry(_ context: RelayRequestContext) async throws -> DeviceEntry {
        let deviceID = context.parameters.get("id") ?? ""
        guard let entry = try await storeCall({ () async throws(StoreError) in try await store.device(entry: deviceID) }) else {
            throw RelayHTTPError(.notFound, "No device '\(deviceID.prefix(128))' in the registry")
        }
        return entry
    }

    /// Live sessions (every one, or the one with `id`), as the table knows them.
    private func sessions(id: String?) async throws -> [JSONValue] {
        try await storeCall { () async throws(StoreError) in try await switchboard.table.liveSessions(id: id) }.map { session in
            .object([
                "session_id": .string(session.id),
                "user_id": .string(session.userID),
                "device_id": .string(session.deviceID),
                "created_at": .time(Date(timeIntervalSince1970: session.createdAt)),
                "phase": .string(session.opened ? "open" : "reserved"),
                "answered": .bool(session.answered),
            ])
        }
    }

    /// `GET /admin/audit?device_id=&user_id=&since=&until=&limit=&after=`: ended and live sessions,
    /// newest first, a page at a time (`next` is the `after` of the following page, null at the end).
    /// Times are ISO 8601 with milliseconds; `since` and `until` take ISO 8601 or Unix milliseconds.
    private func audit(_ request: Request) async throws -> Response {
        let parameters = request.uri.queryParameters
        var query = AuditQuery(deviceID: parameters.get("device_id"), userID: parameters.get("user_id"))
        if let limit = parameters.get("limit") {
            guard let value = Int(limit), (1...1000).contains(value) else { throw RelayHTTPError(.badRequest, "limit must be an integer from 1 to 1000") }
            query.limit = value
        }
        for (name, value) in [("since", parameters.get("since")), ("until", parameters.get("until"))] {
            guard let value else { continue }
            guard let time = Self.time(value) else {
                throw RelayHTTPError(.badRequest, "\(name) must be an ISO 8601 time (2026-11-29T10:00:00Z) or Unix milliseconds")
            }
            if name == "since" { query.since = time } else { query.until = time }
        }
        if let after = parameters.get("after") {
            guard let data = Base64URL.decode(Substring(after)), let text = String(data: data, encoding: .utf8),
                let space = text.firstIndex(of: " "), let time = Int64(text[..<space])
            else { throw RelayHTTPError(.badRequest, "after must be the next value of a previous page") }
            query.after = AuditQuery.Cursor(createdAtMilliseconds: time, sessionID: String(text[text.index(after: space)...]))
        }
        let entries = try await storeCall { () async throws(StoreError) in try await store.auditLog(query) }
        let next: JSONValue =
            entries.count == query.limit
            ? entries.last.map { .string(Base64URL.encode(Array("\($0.createdAt.unixMilliseconds) \($0.sessionID)".utf8))) } ?? .null : .null
        return .json(.object(["entries": .array(entries.map(Self.view)), "next": next]))
    }

    private static func view(_ entry: AuditEntry) -> JSONValue {
        .object([
            "session_id": .string(entry.sessionID),
            "user_id": .string(entry.userID),
            "device_id": .string(entry.deviceID),
            "created_at": .preciseTime(entry.createdAt),
            "answered_at": .preciseTime(entry.answeredAt),
            "closed_at": .preciseTime(entry.closedAt),
            "close_reason": entry.closeReason.map(JSONValue.string) ?? .null,
            "closed_by": entry.closedBy.map(JSONValue.string) ?? .null,
        ])
    }

    /// An ISO 8601 time, or Unix milliseconds.
    private static func time(_ text: String) -> Date? {
        if let milliseconds = Int64(text), milliseconds >= 0 { return Date(unixMilliseconds: milliseconds) }
        return (try? Date.ISO8601FormatStyle(includingFractionalSeconds: true).parse(text)) ?? (try? Date.ISO8601FormatStyle().parse(text))
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
            case .wrongDeviceState: throw RelayHTTPError(.conflict, error.description)
            case .unusable: throw RelayHTTPError(.serviceUnavailable, "Store unavailable", headers: [.retryAfter: "5"])
            }
        }
    }

    /// Devices for operators: the registry rows and presence, never a secret.
    private func views(_ entries: [DeviceEntry]) async -> [JSONValue] {
        let presence = await switchboard.presenceViews(
            of: entries.map(\.deviceID),
            entries: Dictionary(entries.map { ($0.deviceID, $0) }) { first, _ in first }
        )
        return entries.map { entry in
            guard case .object(var fields) = presence[entry.deviceID] else { return .null }
            fields["owners"] = .array(entry.owners.map(JSONValue.string))
            fields["revoked"] = .bool(entry.revoked)
            fields["revoked_at"] = .time(entry.revokedAt)
            fields["created_at"] = .time(entry.createdAt)
            fields["secrets"] = .int(entry.secrets.count)
            return .object(fields)
        }
    }
}

/// `Authorization: Bearer <RELAY_ADMIN_TOKEN>` on every admin route, compared in constant time.
struct AdminAuthorization: RouterMiddleware {
    typealias Context = RelayRequestContext
    let token: String

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard let presented = ClientAuthenticator.bearerToken(in: request, queryParameter: false),
            LibCrypto.constantTimeEquals(Array(presented.utf8), Array(token.utf8))
        else {
            throw RelayHTTPError(.unauthorized, "Admin routes need 'Authorization: Bearer <RELAY_ADMIN_TOKEN>'")
        }
        return try await next(request, context)
    }
}
