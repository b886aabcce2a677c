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
        /// This client is connecting too often: HTTP 429.
        case tooMany
    }

    public var status: Status
    /// A short fixed code for metrics (`expired`, `bad_signature`, ...).
    public var reason: String
    public var detail: String

    public init(_ status: Status, reason: String, _ detail: String) {
        self.status = status
        self.reason = reason
        self.detail = detail
    }

    public var description: String { detail }

    // App tokens
    public static let missingToken = AuthFailure(
        .unauthenticated,
        reason: "missing_token",
        "Missing app token: send 'Authorization: Bearer <jwt>' or the 'token' query parameter"
    )
    public static let tokenTooLong = AuthFailure(.unauthenticated, reason: "token_too_long", "App token is too long")
    public static let malformedToken = AuthFailure(
        .unauthenticated,
        reason: "malformed_token",
        "Malformed app token: expected three base64url segments"
    )
    public static let malformedHeader = AuthFailure(.unauthenticated, reason: "malformed_header", "Malformed app token header")
    public static func algorithmNotAllowed(_ name: String) -> AuthFailure {
        AuthFailure(.unauthenticated, reason: "algorithm_not_allowed", "App token algorithm '\(name.prefix(16))' is not allowed")
    }
    /// RFC 7515 §4.1.11: a token whose `crit` header names extensions must be refused by a
    /// verifier that does not understand them, and the relay understands none.
    public static func unsupportedCritical(_ names: [String]) -> AuthFailure {
        AuthFailure(
            .unauthenticated,
            reason: "unsupported_crit",
            "App token header requires extensions the relay does not support (crit: \(names.joined(separator: ", ")))"
        )
    }
    public static func unsupportedType(_ type: String) -> AuthFailure {
        AuthFailure(
            .unauthenticated,
            reason: "unsupported_type",
            "App token type (typ) '\(type.prefix(32))' is not accepted: the relay accepts JWT and at+jwt"
        )
    }
    public static let unknownKey = AuthFailure(.unauthenticated, reason: "unknown_key", "No configured key matches the app token's algorithm and kid")
    public static let badSignature = AuthFailure(.unauthenticated, reason: "bad_signature", "App token signature is invalid")
    public static let expired = AuthFailure(.unauthenticated, reason: "expired", "App token has expired")
    public static let notYetValid = AuthFailure(.unauthenticated, reason: "not_yet_valid", "App token is not valid yet (nbf)")
    public static let issuedInFuture = AuthFailure(.unauthenticated, reason: "issued_in_future", "App token is issued in the future (iat)")
    public static let wrongIssuer = AuthFailure(.unauthenticated, reason: "wrong_issuer", "App token issuer (iss) is not accepted")
    public static let wrongAudience = AuthFailure(.unauthenticated, reason: "wrong_audience", "App token audience (aud) is not accepted")
    public static func invalidClaims(_ detail: String) -> AuthFailure {
        AuthFailure(.unauthenticated, reason: "invalid_claims", "App token claims are invalid: \(detail)")
    }

    // Device signatures
    public static func missingDeviceParameters(_ names: [String]) -> AuthFailure {
        AuthFailure(
            .unauthenticated,
            reason: "missing_device_parameters",
            "Missing \(names.joined(separator: " and ")): sign device URLs as device_id, ts, nonce and sig=hex(HMAC-SHA256(secret, device_id\\nts\\nnonce))"
        )
    }
    public static let malformedDeviceID = AuthFailure(
        .unauthenticated,
        reason: "malformed_device_id",
        "device_id must be 1-128 characters of [A-Za-z0-9._:-]"
    )
    public static let malformedNonce = AuthFailure(.unauthenticated, reason: "malformed_nonce", "nonce must be 16-64 characters of [A-Za-z0-9_-]")
    public static let malformedTimestamp = AuthFailure(.unauthenticated, reason: "malformed_timestamp", "ts must be Unix seconds")
    public static let malformedSignature = AuthFailure(.unauthenticated, reason: "malformed_signature", "sig must be 64 lowercase hex digits")
    public static func staleTimestamp(window: Int, now: Int) -> AuthFailure {
        AuthFailure(.unauthenticated, reason: "stale_timestamp", "ts is more than \(window) s from the relay's clock (relay time \(now))")
    }
    public static let unknownDevice = AuthFailure(.unauthenticated, reason: "unknown_device", "Unknown device")
    public static let badDeviceSignature = AuthFailure(.unauthenticated, reason: "bad_device_signature", "Device signature is invalid")
    public static let replayedNonce = AuthFailure(
        .unauthenticated,
        reason: "replayed_nonce",
        "This nonce was already used: sign each connection with a fresh nonce"
    )
    public static let deviceRevoked = AuthFailure(.forbidden, reason: "device_revoked", "Device is revoked")
    public static let deviceNoncesExhausted = AuthFailure(
        .tooMany,
        reason: "device_nonces_exhausted",
        "This device connected too often within the signature window; try again shortly"
    )
    public static let replayCacheFull = AuthFailure(
        .unavailable,
        reason: "replay_cache_full",
        "Too many device connections in the signature window; try again shortly"
    )
}
