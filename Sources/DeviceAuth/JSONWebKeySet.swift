/// Public keys from a JSON Web Key Set (RFC 7517): what identity providers publish.
import Foundation
import OpenSSLCrypto
import Synchronization

/// The signing keys of a JWK Set as the verifier's PEM public keys: RSA (`n`, `e`) and EC
/// (`crv` P-256, P-384 or P-521, `x`, `y`), each named by its `kid`. Keys for encryption
/// (`use: enc`), symmetric keys and other types are skipped (and counted).
public enum JSONWebKeySet {
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public var description: String
    }

    public static func publicKeys(_ data: Data) throws(Invalid) -> (keys: [AppTokenVerifier.PublicKey], skipped: Int) {
        guard let document = try? JSONSerialization.jsonObject(with: data) as? [String: Any], let entries = document["keys"] as? [Any] else {
            throw Invalid(description: "not a JWK Set: a JSON object with a \"keys\" array")
        }
        var keys: [AppTokenVerifier.PublicKey] = []
        var skipped = 0
        for entry in entries {
            guard let jwk = entry as? [String: Any], let key = publicKey(jwk) else {
                skipped += 1
                continue
            }
            keys.append(key)
        }
        return (keys, skipped)
    }

    /// One JWK as a public key, or nil when it is not an RSA or EC signing key OpenSSL accepts.
    static func publicKey(_ jwk: [String: Any]) -> AppTokenVerifier.PublicKey? {
        if let use = jwk["use"] as? String, use != "sig" { return nil }
        let id = jwk["kid"] as? String
        let field = { (name: String) in (jwk[name] as? String).flatMap { Base64URL.decode(Substring($0)) }.map { [UInt8]($0) } }
        let pem: String?
        switch jwk["kty"] as? String {
        case "RSA":
            guard let n = field("n"), let e = field("e") else { return nil }
            pem = LibCrypto.rsaPublicKeyPEM(modulus: n, exponent: e)
        case "EC":
            let groups = ["P-256": "prime256v1", "P-384": "secp384r1", "P-521": "secp521r1"]
            guard let curve = jwk["crv"] as? String, let group = groups[curve], let x = field("x"), let y = field("y") else { return nil }
            pem = LibCrypto.ecPublicKeyPEM(group: group, x: x, y: y)
        default:
            return nil
        }
        return pem.flatMap { AppTokenVerifier.PublicKey(id: id, pem: $0) }
    }
}

/// Public keys that change while the relay runs (an identity provider's JWKS, fetched again
/// when it rotates): the verifier reads them at each verification.
public final class KeyRing: Sendable {
    private let state = Mutex<[AppTokenVerifier.PublicKey]>([])

    public init(_ keys: [AppTokenVerifier.PublicKey] = []) {
        state.withLock { $0 = keys }
    }

    public var keys: [AppTokenVerifier.PublicKey] { state.withLock { $0 } }

    public func replace(with keys: [AppTokenVerifier.PublicKey]) {
        state.withLock { $0 = keys }
    }
}
