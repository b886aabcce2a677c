import DeviceAuth
import Foundation
import Hummingbird
import Logging

/// Admits apps: a JWT from `Authorization: Bearer` or the `token` query parameter.
struct AppAuthenticationMiddleware: RouterMiddleware {
    typealias Context = RelayRequestContext
    let verifier: AppTokenVerifier

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        do {
            guard let token = Self.token(in: request) else { throw AuthFailure.missingToken }
            context.identity = .app(try verifier.verify(token, now: Date().timeIntervalSince1970))
        } catch let failure as AuthFailure {
            context.logger.info("App refused", metadata: ["auth.reason": "\(failure.detail)"])
            throw RelayHTTPError(failure)
        }
        return try await next(request, context)
    }

    static func token(in request: Request) -> String? {
        if let header = request.headers[.authorization] {
            let parts = header.split(separator: " ", maxSplits: 1)
            if parts.count == 2, parts[0].lowercased() == "bearer" { return String(parts[1]).trimmingCharacters(in: .whitespaces) }
            return nil
        }
        return request.uri.queryParameters.get("token")
    }
}

/// Admits devices: the HMAC-signed query of contract §1.2.
struct DeviceAuthenticationMiddleware: RouterMiddleware {
    typealias Context = RelayRequestContext
    let authenticator: DeviceAuthenticator

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        let query = request.uri.queryParameters
        do {
            let signature = try DeviceSignature { query.get($0) }
            context.identity = .device(try await authenticator.authenticate(signature, now: Int(Date().timeIntervalSince1970)))
        } catch {
            context.logger.info("Device refused", metadata: ["auth.reason": "\(error.detail)", "device.id": "\(query.get("device_id")?.prefix(128) ?? "-")"])
            throw RelayHTTPError(error)
        }
        return try await next(request, context)
    }
}
