/// Why a client was not let in. Every failure maps to one HTTP status and one human-readable
/// `detail`; neither ever repeats the credential itself.
public struct AuthFailure: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Status: Sendable, Equatable {
        /// Bad or missing credentials: HTTP 401.
        case unauthenticated
        /// Valid credentials that are not allowed in: HTTP 403.
        case forbidden
        /// The relay cannot take the connection now: HTTP 503.
        case unavailable
    }

    public var status: Status
    public var detail: String

    public init(_ status: Status, _ detail: String) {
        self.status = status
        self.detail = detail
    }

    public var description: String { detail }

    // App tokens
    public static let missingToken = AuthFailure(
        .unauthenticated,
        "Missing app token: send 'Authorization: Bearer <jwt>' or the 'token' query parameter"
    )
    public static let tokenTooLong = AuthFailure(.unauthenticated, "App token is too long")
    public static let malformedToken = AuthFailure(.unauthenticated, "Malformed app token: expected three base64url segments")
    public static let malformedHeader = AuthFailure(.unauthenticated, "Malformed app token header")
    public static func algorithmNotAllowed(_ name: String) -> AuthFailure {
        AuthFailure(.unauthenticated, "App token algorithm '\(name.prefix(16))' is not allowed")
    }
    public static let unknownKey = AuthFailure(.unauthenticated, "No configured key matches the app token's algorithm and kid")
    public static let badSignature = AuthFailure(.unauthenticated, "App token signature is invalid")
    public static let expired = AuthFailure(.unauthenticated, "App token has expired")
    public static let notYetValid = AuthFailure(.unauthenticated, "App token is not valid yet (nbf)")
    public static let issuedInFuture = AuthFailure(.unauthenticated, "App token is issued in the future (iat)")
    public static let wrongIssuer = AuthFailure(.unauthenticated, "App token issuer (iss) is not accepted")
    public static let wrongAudience = AuthFailure(.unauthenticated, "App token audience (aud) is not accepted")
    public static func invalidClaims(_ detail: String) -> AuthFailure {
        AuthFailure(.unauthenticated, "App token claims are invalid: \(detail)")
    }

    // Device signatures
    public static func missingDeviceParameters(_ names: [String]) -> AuthFailure {
        AuthFailure(
            .unauthenticated,
            "Missing \(names.joined(separator: " and ")): sign device URLs as device_id, ts, nonce and sig=hex(HMAC-SHA256(secret, device_id\\nts\\nnonce))"
        )
    }
    public static let malformedDeviceID = AuthFailure(.unauthenticated, "device_id must be 1-128 characters of [A-Za-z0-9._:-]")
    public static let malformedNonce = AuthFailure(.unauthenticated, "nonce must be 16-64 characters of [A-Za-z0-9_-]")
    public static let malformedTimestamp = AuthFailure(.unauthenticated, "ts must be Unix seconds")
    public static let malformedSignature = AuthFailure(.unauthenticated, "sig must be 64 lowercase hex digits")
    public static func staleTimestamp(window: Int, now: Int) -> AuthFailure {
        AuthFailure(.unauthenticated, "ts is more than \(window) s from the relay's clock (relay time \(now))")
    }
    public static let unknownDevice = AuthFailure(.unauthenticated, "Unknown device")
    public static let badDeviceSignature = AuthFailure(.unauthenticated, "Device signature is invalid")
    public static let replayedNonce = AuthFailure(.unauthenticated, "This nonce was already used: sign each connection with a fresh nonce")
    public static let deviceRevoked = AuthFailure(.forbidden, "Device is revoked")
    public static let replayCacheFull = AuthFailure(.unavailable, "Too many device connections in the signature window; try again shortly")
}
