/// The WebSocket endpoints' admission: who may upgrade on `/ws/app` and `/ws/device`.
import Hummingbird
import RelayCore
import RelayWebSocket

/// The decision taken on each WebSocket upgrade request, before the upgrade, so a refusal is an
/// HTTP answer (contract §1): the path names the party, the client authenticates as it, a resume
/// is read from the query, and an accepted client gets a `LinkSocket` for its link.
enum LinkUpgradeGate {
    static let paths: [String: Party] = ["/ws/app": .app, "/ws/device": .device]

    static func gate(switchboard: Switchboard, admission: ClientAdmission, connection: LinkConnection) -> UpgradeGate {
        UpgradeGate { request, remoteIP, logger in
            if switchboard.isDraining { return .refuse(RelayHTTPError.restarting.refusal) }
            guard let party = paths[request.uri.path] else {
                return .refuse(RelayHTTPError(.notFound, "No WebSocket endpoint at this path").refusal)
            }
            do throws(RelayHTTPError) {
                let query = request.uri.queryParameters
                let resume = try ResumeRequest.requested(
                    token: query.get("resume_token").map(RequestField.present) ?? .absent,
                    lastSeq: query.get("last_seq").map { Int($0).map(RequestField.present) ?? .malformed } ?? .absent
                )
                let identity = try await admission.admit(request, query: query, as: party, from: remoteIP, logger: logger)
                let seed = try await switchboard.prepare(identity, resume: resume)
                return .accept { LinkSocket(connection: connection, identity: identity, resume: resume, seed: seed) }
            } catch {
                return .refuse(error.refusal)
            }
        }
    }

    /// A plain GET on a WebSocket path (no upgrade asked for) gets 426 rather than a 404.
    static var plainRequests: RouteCollection<RelayRequestContext> {
        let routes = RouteCollection(context: RelayRequestContext.self)
        for path in paths.keys.sorted() {
            routes.get(RouterPath(path)) { _, _ -> Response in
                throw RelayHTTPError(.upgradeRequired, "Connect with a WebSocket upgrade")
            }
        }
        return routes
    }
}
