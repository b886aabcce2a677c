import Foundation
import OpenSSLCrypto
import RelayCore
import Testing

@testable import DeviceAuth

/// What an app sees when it presents a token: accepted with its identity, or refused with a reason.
@Suite struct AppTokenVerifierTests {
    static let secret = Array("0123456789abcdef0123456789abcdef".utf8)
    let now = 1_800_000_000.0

    func verifier(_ configure: (inout AppTokenVerifier.Configuration) -> Void = { _ in }) -> AppTokenVerifier {
        var configuration = AppTokenVerifier.Configuration(secretKeys: [.init(secret: Self.secret)])
        configure(&configuration)
        return AppTokenVerifier(configuration: configuration)
    }

    func claims(_ extra: [String: Any] = [:]) -> [String: Any] {
        var claims: [String: Any] = ["sub": "alice", "exp": Int(now) + 600, "iat": Int(now)]
        claims.merge(extra) { _, new in new }
        return claims
    }

    /// A token with any header and payload, signed with OpenSSL under `algorithm` (HS256 by
    /// default; libjwt would refuse to make most of these).
    func forge(header: [String: Any], claims: [String: Any], key: [UInt8] = secret, algorithm: JWTAlgorithm = .hs256) throws -> String {
        let head = Base64URL.encode(try JSONSerialization.data(withJSONObject: header, options: .sortedKeys))
        let body = Base64URL.encode(try JSONSerialization.data(withJSONObject: claims))
        let signature = try #require(JWSSignature.sign(algorithm, key: key, signingInput: "\(head).\(body)"))
        return "\(head).\(body).\(Base64URL.encode(signature))"
    }

    func sign(_ algorithm: JWTAlgorithm, key: [UInt8], claims: [String: Any], kid: String? = nil) throws -> String {
        let json = String(decoding: try JSONSerialization.data(withJSONObject: claims), as: UTF8.self)
        return try LibJWT.encode(algorithm: algorithm, key: key, claimsJSON: json, headers: kid.map { ["kid": $0] } ?? [:])
    }

    func refusal(_ verifier: AppTokenVerifier, _ token: String) -> AuthFailure? {
        do {
            _ = try verifier.verify(token, now: now)
            return nil
        } catch {
            return error
        }
    }

    @Test func validTokenGivesUserAndDevices() throws {
        let token = try sign(.hs256, key: Self.secret, claims: claims(["devices": ["robot-1", "robot-2"]]))
        let identity = try verifier().verify(token, now: now)
        #expect(identity == AppIdentity(userID: "alice", expiresAt: now + 600, devices: ["robot-1", "robot-2"]))
    }

    @Test func tokenFromTheSignerVerifies() throws {
        let token = try AppTokenSigner(secret: Self.secret).token(userID: "bob", devices: ["robot-1"], now: now, lifetime: 60)
        #expect(try verifier().verify(token, now: now).userID == "bob")
    }

    @Test func expiredTokenIsRefusedAfterLeeway() throws {
        let token = try sign(.hs256, key: Self.secret, claims: claims(["exp": Int(now) - 31]))
        #expect(refusal(verifier(), token) == .expired)
        let withinLeeway = try sign(.hs256, key: Self.secret, claims: claims(["exp": Int(now) - 29]))
        #expect(refusal(verifier(), withinLeeway) == nil)
    }

    @Test func tokenNotYetValidIsRefused() throws {
        #expect(refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["nbf": Int(now) + 31]))) == .notYetValid)
        #expect(refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["nbf": Int(now) + 29]))) == nil)
    }

    @Test func tokenIssuedInTheFutureIsRefused() throws {
        #expect(refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["iat": Int(now) + 120]))) == .issuedInFuture)
    }

    @Test func wrongSignatureIsRefused() throws {
        let token = try sign(.hs256, key: Array("another-secret-another-secret-xx".utf8), claims: claims())
        #expect(refusal(verifier(), token) == .badSignature)
    }

    @Test func algorithmsOutsideTheAllowlistAreRefused() throws {
        let hs512 = try sign(.hs512, key: Self.secret, claims: claims())
        #expect(refusal(verifier(), hs512) == .algorithmNotAllowed("HS512"))
        // libjwt 1.10 itself accepts a lower-case algorithm name.
        let lowercase = try forge(header: ["alg": "hs256", "typ": "JWT"], claims: claims())
        #expect(refusal(verifier(), lowercase) == .algorithmNotAllowed("hs256"))
        // ...and HS512 is accepted once allowed.
        #expect(refusal(verifier { $0.algorithms = [.hs256, .hs512] }, hs512) == nil)
    }

    @Test func algNoneIsRefused() throws {
        let head = Base64URL.encode(Array(#"{"alg":"none","typ":"JWT"}"#.utf8))
        let body = Base64URL.encode(try JSONSerialization.data(withJSONObject: claims()))
        #expect(refusal(verifier(), "\(head).\(body).") == .malformedToken)
        #expect(refusal(verifier(), "\(head).\(body).c2ln") == .algorithmNotAllowed("none"))
    }

    @Test func hs256TokenSignedWithTheRSAPublicKeyIsRefused() throws {
        let rsa = try #require(AppTokenVerifier.PublicKey(pem: TestKeys.rsaPublic))
        let verifier = verifier {
            $0.algorithms = [.hs256, .rs256]
            $0.secretKeys = []
            $0.publicKeys = [rsa]
        }
        // The classic confusion: HMAC keyed with the PEM text the relay holds as a public key.
        let confused = try forge(header: ["alg": "HS256", "typ": "JWT"], claims: claims(), key: Array(TestKeys.rsaPublic.utf8))
        #expect(refusal(verifier, confused) == .unknownKey)
        // The real RS256 token is fine.
        let genuine = try sign(.rs256, key: Array(TestKeys.rsaPrivate.utf8), claims: claims())
        #expect(refusal(verifier, genuine) == nil)
    }

    @Test func ecTokensVerifyWithTheECKeyOnly() throws {
        let ec = try #require(AppTokenVerifier.PublicKey(pem: TestKeys.ecPublic))
        let rsa = try #require(AppTokenVerifier.PublicKey(pem: TestKeys.rsaPublic))
        #expect(ec.kind == .ec && rsa.kind == .rsa)
        let verifier = verifier {
            $0.algorithms = [.es256, .rs256]
            $0.publicKeys = [rsa, ec]
        }
        let token = try sign(.es256, key: Array(TestKeys.ecPrivate.utf8), claims: claims())
        #expect(try verifier.verify(token, now: now).userID == "alice")
        // An ES256 header over an RS256 signature does not verify with the EC key.
        let rsSigned = try sign(.rs256, key: Array(TestKeys.rsaPrivate.utf8), claims: claims())
        let parts = rsSigned.split(separator: ".")
        let relabelled = Base64URL.encode(Array(#"{"alg":"ES256","typ":"JWT"}"#.utf8)) + ".\(parts[1]).\(parts[2])"
        #expect(refusal(verifier, relabelled) == .badSignature)
    }

    @Test func kidSelectsAmongSeveralKeys() throws {
        let old = Array("old-secret-old-secret-old-secret".utf8)
        let new = Array("new-secret-new-secret-new-secret".utf8)
        let verifier = verifier { $0.secretKeys = [.init(id: "2025", secret: old), .init(id: "2026", secret: new)] }
        #expect(refusal(verifier, try sign(.hs256, key: old, claims: claims(), kid: "2025")) == nil)
        #expect(refusal(verifier, try sign(.hs256, key: new, claims: claims(), kid: "2026")) == nil)
        #expect(refusal(verifier, try sign(.hs256, key: old, claims: claims(), kid: "2026")) == .badSignature)
        #expect(refusal(verifier, try sign(.hs256, key: new, claims: claims(), kid: "1999")) == .unknownKey)
        // Two named keys and no kid: which one is meant is unknown.
        #expect(refusal(verifier, try sign(.hs256, key: new, claims: claims())) == .unknownKey)
    }

    @Test func megabyteTokenIsRefusedBeforeLibjwtSeesIt() throws {
        let huge = try forge(header: ["alg": "HS256", "typ": "JWT"], claims: claims(["pad": String(repeating: "x", count: 1 << 20)]))
        #expect(refusal(verifier(), huge) == .tokenTooLong)
    }

    @Test func aCriticalHeaderExtensionIsRefused() throws {
        let critical = try forge(header: ["alg": "HS256", "typ": "JWT", "crit": ["exp-ms"], "exp-ms": 1], claims: claims())
        #expect(refusal(verifier(), critical) == .unsupportedCritical(["exp-ms"]))
        #expect(AuthFailure.unsupportedCritical(["exp-ms"]).detail == "App token header requires extensions the relay does not support (crit: exp-ms)")
        // Without crit, unknown header fields are ignored, as RFC 7515 asks.
        let extra = try forge(header: ["alg": "HS256", "typ": "JWT", "x-note": "hello"], claims: claims())
        #expect(refusal(verifier(), extra) == nil)
    }

    @Test func timesOutOfRangeAreRefusedBeforeAnyArithmetic() throws {
        let message = "must be a time in seconds since 1970, at most 253402300799"
        for (name, value) in [("exp", 1e300), ("exp", 1.8e18), ("exp", -1.0), ("nbf", 1e300), ("iat", -5.0)] {
            let token = try forge(header: ["alg": "HS256", "typ": "JWT"], claims: claims([name: value]))
            #expect(refusal(verifier(), token) == .invalidClaims("\(name) \(message)"), "\(name) = \(value)")
        }
        // The last second of the year 9999 is still a time.
        let farButValid = try forge(header: ["alg": "HS256", "typ": "JWT"], claims: claims(["exp": 253_402_300_799]))
        #expect(try verifier().verify(farButValid, now: now).expiresAt == 253_402_300_799)
    }

    /// Every algorithm with the key it needs: (private key or secret, the verifier's public key).
    static let keysByAlgorithm: [(JWTAlgorithm, signing: [UInt8], publicPEM: String?)] = [
        (.hs256, secret, nil), (.hs384, secret, nil), (.hs512, secret, nil),
        (.rs256, Array(TestKeys.rsaPrivate.utf8), TestKeys.rsaPublic),
        (.rs384, Array(TestKeys.rsaPrivate.utf8), TestKeys.rsaPublic),
        (.rs512, Array(TestKeys.rsaPrivate.utf8), TestKeys.rsaPublic),
        (.es256, Array(TestKeys.ecPrivate.utf8), TestKeys.ecPublic),
        (.es384, Array(TestKeys.ecP384Private.utf8), TestKeys.ecP384Public),
        (.es512, Array(TestKeys.ecP521Private.utf8), TestKeys.ecP521Public),
    ]

    /// A verifier that accepts every algorithm, with the secret and the four public keys.
    func everyAlgorithmVerifier() throws -> AppTokenVerifier {
        let pems = [TestKeys.rsaPublic, TestKeys.ecPublic, TestKeys.ecP384Public, TestKeys.ecP521Public]
        let publicKeys = try pems.enumerated().map { index, pem in try #require(AppTokenVerifier.PublicKey(id: "k\(index)", pem: pem)) }
        return verifier {
            $0.algorithms = Set(JWTAlgorithm.allCases)
            $0.publicKeys = publicKeys
        }
    }

    /// The kid `everyAlgorithmVerifier` gives `pem`.
    func keyID(_ pem: String?) -> String? {
        pem.flatMap { [TestKeys.rsaPublic, TestKeys.ecPublic, TestKeys.ecP384Public, TestKeys.ecP521Public].firstIndex(of: $0) }.map { "k\($0)" }
    }

    @Test func oauthAccessTokensVerifyWithEveryAlgorithm() throws {
        // RFC 9068's typ at+jwt, which libjwt 1.10 refuses to read: OpenSSL checks them. The
        // same signer's typ JWT tokens go through libjwt, so both paths read the same signatures.
        let verifier = try everyAlgorithmVerifier()
        for (algorithm, signing, pem) in Self.keysByAlgorithm {
            for typ in ["at+jwt", "application/at+jwt", "AT+JWT", "JWT"] {
                var header: [String: Any] = ["alg": algorithm.rawValue, "typ": typ]
                header["kid"] = keyID(pem)
                let token = try forge(header: header, claims: claims(), key: signing, algorithm: algorithm)
                #expect(refusal(verifier, token) == nil, "\(algorithm) \(typ)")
                // One bit of the signature changed.
                var bytes = Array(token.utf8)
                let last = bytes.count - 2
                bytes[last] = bytes[last] == UInt8(ascii: "A") ? UInt8(ascii: "B") : UInt8(ascii: "A")
                #expect(refusal(verifier, String(decoding: bytes, as: UTF8.self)) == .badSignature, "\(algorithm) \(typ)")
                // The same signature over other claims.
                let parts = token.split(separator: ".")
                let otherClaims = Base64URL.encode(try JSONSerialization.data(withJSONObject: claims(["sub": "mallory"])))
                #expect(refusal(verifier, "\(parts[0]).\(otherClaims).\(parts[2])") == .badSignature, "\(algorithm) \(typ)")
            }
            // And what libjwt signs, OpenSSL verifies.
            let json = String(decoding: try JSONSerialization.data(withJSONObject: claims()), as: UTF8.self)
            let libjwtToken = try LibJWT.encode(algorithm: algorithm, key: signing, claimsJSON: json)
            let parts = libjwtToken.split(separator: ".")
            let key = pem.map { Array($0.utf8) } ?? signing
            let signature = try #require(Base64URL.decode(parts[2]))
            #expect(JWSSignature.verify(algorithm, key: key, signingInput: libjwtToken[..<parts[1].endIndex], signature: Array(signature)), "\(algorithm)")
        }
    }

    @Test func oauthAccessTokensGetTheSameKeyAndClaimChecks() throws {
        let verifier = try everyAlgorithmVerifier()
        // HMAC keyed with the RSA public key's text: the HMAC family's key is the secret.
        let confused = try forge(header: ["alg": "HS256", "typ": "at+jwt"], claims: claims(), key: Array(TestKeys.rsaPublic.utf8))
        #expect(refusal(verifier, confused) == .badSignature)
        // ES256 named with the P-384 key's kid, signed by that key: the curve is not ES256's.
        let wrongCurve = try forge(
            header: ["alg": "ES256", "typ": "at+jwt", "kid": "k2"], claims: claims(), key: Array(TestKeys.ecP384Private.utf8), algorithm: .es384)
        #expect(refusal(verifier, wrongCurve) == .badSignature)
        // An RS256 signature under an ES256 header naming the EC key.
        let rsSigned = try forge(header: ["alg": "ES256", "typ": "at+jwt", "kid": "k1"], claims: claims(), key: Array(TestKeys.rsaPrivate.utf8), algorithm: .rs256)
        #expect(refusal(verifier, rsSigned) == .badSignature)
        // Claims are checked as for any token.
        #expect(refusal(verifier, try forge(header: ["alg": "HS256", "typ": "at+jwt"], claims: claims(["exp": Int(now) - 600]))) == .expired)
        #expect(
            refusal(verifier, try forge(header: ["alg": "HS256", "typ": "at+jwt"], claims: claims(["exp": 1e300])))
                == .invalidClaims("exp must be a time in seconds since 1970, at most 253402300799"))
        #expect(refusal(verifier, try forge(header: ["alg": "HS256", "typ": "at+jwt"], claims: ["exp": Int(now) + 600])) == .invalidClaims("sub is required"))
        let integerSubject = try forge(header: ["alg": "HS256", "typ": "at+jwt"], claims: claims(["sub": 1234]))
        #expect(refusal(verifier, integerSubject) == .invalidClaims("sub must be a string (RFC 7519 StringOrURI)"))
    }

    @Test func otherTokenTypesAreRefusedSayingSo() throws {
        for typ in ["dpop+jwt", "JOSE", "secevent+jwt"] {
            let token = try forge(header: ["alg": "HS256", "typ": typ], claims: claims())
            let refused = try #require(refusal(verifier(), token))
            #expect(refused == .unsupportedType(typ) && refused.detail.contains("typ") && refused.detail.contains("at+jwt"))
        }
        let lowercase = try forge(header: ["alg": "HS256", "typ": "jwt"], claims: claims())
        #expect(try verifier().verify(lowercase, now: now).userID == "alice")
    }

    @Test func theControlClaimGivesTheRoleAndDriveWhenAbsent() throws {
        // Contract §12: observe, drive (the default) or supervise; anything else is refused.
        #expect(try verifier().verify(try sign(.hs256, key: Self.secret, claims: claims()), now: now).controlRole == .drive)
        for role in ControlRole.allCases {
            let token = try sign(.hs256, key: Self.secret, claims: claims(["control": role.rawValue]))
            #expect(try verifier().verify(token, now: now).controlRole == role)
        }
        for wrong: Any in ["pilot", "Supervise", ""] {
            #expect(
                refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["control": wrong])))
                    == .invalidClaims("control must be observe, drive or supervise"), "\(wrong)")
        }
        #expect(refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["control": 2]))) == .invalidClaims("control has the wrong type"))
        // The signer the tests and `relay token` use writes it.
        let signed = try AppTokenSigner(secret: Self.secret).token(userID: "alice", devices: nil, now: now, lifetime: 60, control: .supervise)
        #expect(try verifier().verify(signed, now: now).controlRole == .supervise)
    }

    @Test func claimsOfTheWrongTypeAreRefused() throws {
        #expect(
            refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["exp": "\(Int(now) + 600)"])))
                == .invalidClaims("exp has the wrong type")
        )
        // sub is a string (RFC 7519 StringOrURI): a number, a list or an object is not a user id.
        for subject: Any in [42, 4.5, ["alice"], ["id": "alice"], true] {
            #expect(
                refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["sub": subject])))
                    == .invalidClaims("sub must be a string (RFC 7519 StringOrURI)"), "\(subject)")
        }
        #expect(
            refusal(verifier(), try sign(.hs256, key: Self.secret, claims: claims(["devices": "robot-1"])))
                == .invalidClaims("devices has the wrong type")
        )
        var noExp = claims()
        noExp["exp"] = nil
        #expect(refusal(verifier(), try sign(.hs256, key: Self.secret, claims: noExp)) == .invalidClaims("exp is required"))
        var noSub = claims()
        noSub["sub"] = nil
        #expect(refusal(verifier(), try sign(.hs256, key: Self.secret, claims: noSub)) == .invalidClaims("sub is required"))
    }

    @Test func issuerAndAudienceAreCheckedWhenConfigured() throws {
        let verifier = verifier {
            $0.issuer = "https://auth.example"
            $0.audience = "relay"
        }
        #expect(
            refusal(verifier, try sign(.hs256, key: Self.secret, claims: claims(["iss": "https://auth.example", "aud": ["relay", "x"]]))) == nil
        )
        #expect(refusal(verifier, try sign(.hs256, key: Self.secret, claims: claims(["iss": "https://auth.example", "aud": "relay"]))) == nil)
        #expect(
            refusal(verifier, try sign(.hs256, key: Self.secret, claims: claims(["iss": "https://evil.example", "aud": "relay"]))) == .wrongIssuer
        )
        #expect(
            refusal(verifier, try sign(.hs256, key: Self.secret, claims: claims(["iss": "https://auth.example", "aud": "other"]))) == .wrongAudience
        )
        #expect(refusal(verifier, try sign(.hs256, key: Self.secret, claims: claims())) == .wrongIssuer)
    }

    @Test func garbageIsRefused() {
        #expect(refusal(verifier(), "not-a-token") == .malformedToken)
        #expect(refusal(verifier(), "a.b.c") == .malformedHeader)
        #expect(refusal(verifier(), "") == .malformedToken)
    }
}
