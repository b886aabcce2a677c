/// Verifies an app's JWT: length cap, header checks, libjwt with the expected key, strict claims.
import Foundation
import OpenSSLCrypto
import RelayCore

/// Verifies app JWTs: algorithm allowlist, key chosen by algorithm family and `kid`, signature
/// through libjwt (through OpenSSL for OAuth access tokens, `typ: at+jwt`, which libjwt 1.10
/// refuses to read), then strict claim checks with leeway.
///
/// libjwt 1.10 pins no algorithm, verifies nothing with an empty key and checks no claim, so
/// every one of those steps happens here, in this order, before and after `jwt_decode`.
public struct AppTokenVerifier: Sendable {
    /// An HMAC secret, optionally named by a `kid`.
    public struct SecretKey: Sendable {
        public var id: String?
        public var secret: [UInt8]
        public init(id: String? = nil, secret: [UInt8]) {
            self.id = id
            self.secret = secret
        }
    }

    /// A PEM public key (RSA or EC), optionally named by a `kid`.
    public struct PublicKey: Sendable {
        public var id: String?
        public var pem: String
        public var kind: LibCrypto.PublicKeyKind
        /// Returns nil when the PEM is not an RSA or EC public key.
        public init?(id: String? = nil, pem: String) {
            guard let kind = LibCrypto.publicKeyKind(pem: pem) else { return nil }
            self.id = id
            self.pem = pem
            self.kind = kind
        }
    }

    public struct Configuration: Sendable {
        /// Algorithms accepted, spelled exactly (`RELAY_JWT_ALGORITHMS`, default `HS256`).
        public var algorithms: Set<JWTAlgorithm>
        public var secretKeys: [SecretKey]
        public var publicKeys: [PublicKey]
        /// Required `iss`, when set.
        public var issuer: String?
        /// Required `aud` (a string, or one element of an array), when set.
        public var audience: String?
        /// Clock skew tolerated on `exp`, `nbf` and `iat`, in seconds.
        public var leewaySeconds: Double
        /// Tokens longer than this are refused before libjwt sees them (it sizes a stack buffer by the token).
        public var maxTokenBytes: Int

        public init(
            algorithms: Set<JWTAlgorithm> = [.hs256],
            secretKeys: [SecretKey] = [],
            publicKeys: [PublicKey] = [],
            issuer: String? = nil,
            audience: String? = nil,
            leewaySeconds: Double = 30,
            maxTokenBytes: Int = 8192
        ) {
            self.algorithms = algorithms
            self.secretKeys = secretKeys
            self.publicKeys = publicKeys
            self.issuer = issuer
            self.audience = audience
            self.leewaySeconds = leewaySeconds
            self.maxTokenBytes = maxTokenBytes
        }
    }

    public let configuration: Configuration
    /// The configured public keys (from files), which a reload replaces; they start as the
    /// configuration's.
    public let publicKeys: KeyRing
    /// Keys that change while the relay runs (a JWKS URL), beside the configured ones.
    public let keyRing: KeyRing?

    public init(configuration: Configuration, keyRing: KeyRing? = nil) {
        self.configuration = configuration
        self.publicKeys = KeyRing(configuration.publicKeys)
        self.keyRing = keyRing
    }

    /// Verifies `token` at time `now` (Unix seconds).
    public func verify(_ token: String, now: Double) throws(AuthFailure) -> AppIdentity {
        guard token.utf8.count <= configuration.maxTokenBytes else { throw .tokenTooLong }
        let segments = token.split(separator: ".", omittingEmptySubsequences: false)
        guard segments.count == 3, segments.allSatisfy({ !$0.isEmpty }) else { throw .malformedToken }
        guard let headerData = Base64URL.decode(segments[0]),
            let header = try? JSONDecoder().decode(Header.self, from: headerData)
        else { throw .malformedHeader }
        guard let algorithm = JWTAlgorithm(rawValue: header.alg), configuration.algorithms.contains(algorithm) else {
            throw .algorithmNotAllowed(header.alg)
        }
        if let critical = header.crit { throw .unsupportedCritical(critical) }
        guard let type = TokenType(header.typ) else { throw .unsupportedType(header.typ ?? "") }
        guard let key = key(for: algorithm, id: header.kid) else { throw .unknownKey }

        let claimsJSON: Data
        switch type {
        case .jwt:
            let decoded: (algorithm: JWTAlgorithm?, claimsJSON: String)
            do {
                decoded = try LibJWT.decode(token, key: key)
            } catch {
                throw .badSignature
            }
            // libjwt verified with whatever algorithm the header named; make sure it is the one we checked.
            guard decoded.algorithm == algorithm else { throw .badSignature }
            claimsJSON = Data(decoded.claimsJSON.utf8)
        case .accessToken:
            // libjwt refuses this typ before verifying: OpenSSL checks the signature over the
            // segments as sent, with the same key.
            let signingInput = token[..<segments[1].endIndex]
            guard let signature = Base64URL.decode(segments[2]),
                JWSSignature.verify(algorithm, key: key, signingInput: signingInput, signature: Array(signature))
            else { throw .badSignature }
            guard let payload = Base64URL.decode(segments[1]) else { throw .invalidClaims("the payload is not base64url") }
            claimsJSON = payload
        }

        let claims: Claims
        do {
            claims = try JSONDecoder().decode(Claims.self, from: claimsJSON)
        } catch {
            throw .invalidClaims(Self.describe(error))
        }
        return try check(claims, now: now)
    }

    /// The token types the relay reads (`typ`, compared without case as RFC 7515 §4.1.9 advises).
    enum TokenType {
        /// `JWT`, or no `typ`: verified by libjwt.
        case jwt
        /// An OAuth 2.0 access token (RFC 9068): `at+jwt` or `application/at+jwt`, verified by OpenSSL.
        case accessToken

        init?(_ typ: String?) {
            switch typ?.lowercased() {
            case nil, "jwt": self = .jwt
            case "at+jwt", "application/at+jwt": self = .accessToken
            default: return nil
            }
        }
    }

    /// The latest NumericDate a token may carry: the end of the year 9999. A time past it (a
    /// timestamp in milliseconds or nanoseconds, `1e300`) is a mistake, refused before any
    /// arithmetic is done with it.
    static let latestNumericDate = 253_402_300_799.0

    private func check(_ claims: Claims, now: Double) throws(AuthFailure) -> AppIdentity {
        let leeway = configuration.leewaySeconds
        for (name, value) in [("exp", claims.exp), ("nbf", claims.nbf), ("iat", claims.iat)] {
            guard let value else { continue }
            guard value.isFinite, (0...Self.latestNumericDate).contains(value) else {
                throw .invalidClaims("\(name) must be a time in seconds since 1970, at most \(Int(Self.latestNumericDate))")
            }
        }
        guard !claims.sub.isEmpty, claims.sub.utf8.count <= 256 else { throw .invalidClaims("sub must be a non-empty string of at most 256 bytes") }
        guard now < claims.exp + leeway else { throw .expired }
        if let nbf = claims.nbf, now + leeway < nbf { throw .notYetValid }
        if let iat = claims.iat, iat > now + leeway { throw .issuedInFuture }
        if let issuer = configuration.issuer, claims.iss != issuer { throw .wrongIssuer }
        if let audience = configuration.audience, !(claims.aud?.values.contains(audience) ?? false) { throw .wrongAudience }
        let role = try claims.control.map { (name: String) throws(AuthFailure) -> ControlRole in
            guard let role = ControlRole(rawValue: name) else { throw .invalidClaims("control must be observe, drive or supervise") }
            return role
        }
        return AppIdentity(userID: claims.sub, expiresAt: claims.exp, devices: claims.devices.map(Set.init), controlRole: role ?? .drive)
    }

    /// The key for `algorithm`'s family: the one named by `kid`, or without a `kid` the unnamed
    /// key (or the only key) of that family.
    private func key(for algorithm: JWTAlgorithm, id: String?) -> [UInt8]? {
        let candidates: [(id: String?, bytes: [UInt8])]
        let publicKeys = self.publicKeys.keys + (keyRing?.keys ?? [])
        switch algorithm.family {
        case .hmac:
            candidates = configuration.secretKeys.map { ($0.id, $0.secret) }
        case .rsa:
            candidates = publicKeys.filter { $0.kind == .rsa }.map { ($0.id, Array($0.pem.utf8)) }
        case .ec:
            candidates = publicKeys.filter { $0.kind == .ec }.map { ($0.id, Array($0.pem.utf8)) }
        }
        let chosen: [UInt8]?
        if let id {
            chosen = candidates.first { $0.id == id }?.bytes
        } else {
            chosen = candidates.first { $0.id == nil }?.bytes ?? (candidates.count == 1 ? candidates[0].bytes : nil)
        }
        guard let chosen, !chosen.isEmpty else { return nil }
        return chosen
    }

    private struct Header: Decodable {
        var alg: String
        var kid: String?
        /// Extensions the verifier must understand (RFC 7515 §4.1.11).
        var crit: [String]?
        var typ: String?
    }

    /// The claims the relay reads, decoded strictly: a string `exp` is refused, and so is a
    /// `sub` that is not a string (RFC 7519 §4.1.2: a StringOrURI; a number would be a second
    /// spelling of a user id, `42` beside `"42"`).
    private struct Claims: Decodable {
        var sub: String
        var exp: Double
        var nbf: Double?
        var iat: Double?
        var iss: String?
        var aud: Audience?
        var devices: [String]?
        /// Contract §12's role: `observe`, `drive` or `supervise`.
        var control: String?
    }

    private enum Audience: Decodable {
        case one(String)
        case many([String])

        var values: [String] {
            switch self {
            case .one(let value): [value]
            case .many(let values): values
            }
        }

        init(from decoder: any Decoder) throws {
            let container = try decoder.singleValueContainer()
            if let value = try? container.decode(String.self) {
                self = .one(value)
            } else {
                self = .many(try container.decode([String].self))
            }
        }
    }

    private static func describe(_ error: any Error) -> String {
        switch error {
        case DecodingError.keyNotFound(let key, _): "\(key.stringValue) is required"
        case DecodingError.typeMismatch(_, let context) where context.codingPath.map(\.stringValue) == ["sub"]:
            "sub must be a string (RFC 7519 StringOrURI)"
        case DecodingError.typeMismatch(_, let context), DecodingError.valueNotFound(_, let context):
            "\(context.codingPath.map(\.stringValue).joined(separator: ".")) has the wrong type"
        default: "not a JSON object"
        }
    }
}

/// Issues app tokens for development and testing (`relay token`).
public struct AppTokenSigner: Sendable {
    public var secret: [UInt8]
    public var keyID: String?

    public init(secret: [UInt8], keyID: String? = nil) {
        self.secret = secret
        self.keyID = keyID
    }

    /// An HS256 token for `userID`, valid from `now` for `lifetime` seconds, granting `devices`
    /// and the `control` role when given.
    public func token(
        userID: String,
        devices: [String]?,
        now: Double,
        lifetime: Double,
        issuer: String? = nil,
        audience: String? = nil,
        control: ControlRole? = nil
    ) throws -> String {
        var claims: [String: Any] = ["sub": userID, "iat": Int(now), "exp": Int(now + lifetime)]
        if let devices { claims["devices"] = devices }
        if let control { claims["control"] = control.rawValue }
        if let issuer { claims["iss"] = issuer }
        if let audience { claims["aud"] = audience }
        let json = String(decoding: try JSONSerialization.data(withJSONObject: claims, options: [.sortedKeys]), as: UTF8.self)
        return try LibJWT.encode(algorithm: .hs256, key: secret, claimsJSON: json, headers: keyID.map { ["kid": $0] } ?? [:])
    }
}
