/// `POST /api/turn/credentials`: an app mints ICE servers outside a session.
import DeviceAuth
import Foundation
import Hummingbird
import Logging
import RelayCore
import TURNBroker

/// `POST /api/turn/credentials` (contract §6): an app mints ICE servers outside a session.
struct TURNCredentialsRoute: Sendable {
    let authenticator: ClientAuthenticator
    let turn: any TURNProvider
    /// Per user, fleet-wide in a fleet.
    let limiter: any KeyedLimit

    var routes: RouteCollection<RelayRequestContext> {
        RouteCollection(context: RelayRequestContext.self).post("/api/turn/credentials", use: respond)
    }

    @Sendable func respond(_ request: Request, context: RelayRequestContext) async throws -> Response {
        let identity = try await authenticator.app(request, logger: context.logger)
        if case .denied(let retryAfter) = await limiter.admit(identity.userID) {
            throw RelayHTTPError(
                .tooManyRequests,
                "Too many TURN credential requests; retry in \(retryAfter) s",
                headers: [.retryAfter: String(retryAfter)]
            )
        }
        let ttl = try await Self.ttl(in: request)
        let document: CredentialDocument
        do throws(TURNError) {
            document = try await turn.mint(ttl: ttl, identifier: "user:\(identity.userID)")
        } catch {
            context.logger.warning("Minting ICE servers failed", metadata: ["turn.provider": "\(turn.name)", "error": "\(error.detail)"])
            switch error.kind {
            case .upstreamTimedOut: throw RelayHTTPError(.gatewayTimeout, error.detail)
            case .upstreamFailed: throw RelayHTTPError(.badGateway, error.detail)
            }
        }
        return Response(
            status: .ok,
            headers: [.contentType: "application/json", .cacheControl: "no-store"],
            body: .init(byteBuffer: ByteBuffer(string: Switchboard.encode(document)))
        )
    }

    /// The optional `{"ttl": N}` body: 60-172800, default 3600; anything else is a 400.
    static func ttl(in request: Request) async throws -> Int {
        let object = try await request.jsonObject(upTo: 4096, required: false, example: "{\"ttl\": 3600}")
        guard let value = object["ttl"] else { return TURNLimits.defaultTTL }
        guard let ttl = value.intValue, TURNLimits.ttlRange.contains(ttl) else {
            throw RelayHTTPError(.badRequest, "ttl must be an integer from \(TURNLimits.ttlRange.lowerBound) to \(TURNLimits.ttlRange.upperBound)")
        }
        return ttl
    }
}
