/// Authenticates a request as an app (JWT) or a device (signed query); refusals become HTTP answers.
import DeviceAuth
import Foundation
import Hummingbird
import HummingbirdCore
import Logging

/// Authenticates apps (JWT from `Authorization: Bearer` or the `token` query parameter) and
/// devices (the HMAC-signed query of contract §1.2). Failures become a status and a `detail`;
/// neither the log nor the answer ever holds the token, the signature or the nonce.
struct ClientAuthenticator: Sendable {
    let tokens: AppTokenVerifier
    let devices: DeviceAuthenticator
    let metrics: RelayMetrics
    /// The identity provider's key set, fetched again when a token names a key it lacks.
    var jwks: JWKSSource? = nil

    /// The app's identity; `query` is the request's query when the caller has parsed it already
    /// (Hummingbird parses it again on every `queryParameters`).
    func app(_ request: Request, query: FlatDictionary<Substring, Substring>? = nil, logger: Logger) async throws(RelayHTTPError) -> AppIdentity {
        do throws(AuthFailure) {
            guard let token = Self.bearerToken(in: request, query: query) else { throw AuthFailure.missingToken }
            do throws(AuthFailure) {
                return try tokens.verify(token, now: Date().timeIntervalSince1970)
            } catch .unknownKey where jwks != nil {
                // The provider may have started signing with a new key: fetch its set, try once more.
                guard await jwks?.refreshAfterMiss() == true else { throw AuthFailure.unknownKey }
                return try tokens.verify(token, now: Date().timeIntervalSince1970)
            }
        } catch {
            metrics.authFailed(error.reason)
            logger.info("App refused", metadata: ["auth.reason": "\(error.detail)"])
            throw RelayHTTPError(error)
        }
    }

    func device(_ request: Request, query: FlatDictionary<Substring, Substring>? = nil, logger: Logger) async throws(RelayHTTPError) -> DeviceRecord {
        let query = query ?? request.uri.queryParameters
        do {
            let signature = try DeviceSignature { query.get($0) }
            return try await devices.authenticate(signature, now: Int(Date().timeIntervalSince1970))
        } catch {
            let deviceID = query.get("device_id").flatMap { DeviceSignature.isValidDeviceID($0) ? $0 : nil } ?? "-"
            metrics.authFailed(error.reason)
            logger.info("Device refused", metadata: ["auth.reason": "\(error.detail)", "device.id": "\(deviceID)"])
            throw RelayHTTPError(error)
        }
    }

    /// The `Authorization: Bearer` token, else (for browsers) the `token` query parameter.
    static func bearerToken(in request: Request, queryParameter: Bool = true, query: FlatDictionary<Substring, Substring>? = nil) -> String? {
        if let header = request.headers[.authorization] {
            let parts = header.split(separator: " ", maxSplits: 1)
            guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
            return parts[1].trimmingCharacters(in: .whitespaces)
        }
        return queryParameter ? (query ?? request.uri.queryParameters).get("token") : nil
    }
}

/// Who a connection was authenticated as.
public enum ClientIdentity: Sendable {
    case app(AppIdentity)
    case device(DeviceRecord)
}
