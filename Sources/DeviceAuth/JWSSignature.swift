/// A JWS signature checked by OpenSSL, for the tokens libjwt 1.10 will not read (OAuth's `at+jwt`).
import OpenSSLCrypto

/// Checks a token's signature over its first two segments with OpenSSL's libcrypto.
///
/// libjwt 1.10 refuses any `typ` but `JWT` before it verifies, and the signature covers the header,
/// so an OAuth access token (RFC 9068, `typ: at+jwt`) cannot reach it. Those tokens are verified
/// here, with the key the relay chose for libjwt (by the algorithm family it expects, never by
/// what the token says) and the same algorithms: HMAC, RSASSA-PKCS1-v1_5 and ECDSA.
enum JWSSignature {
    /// Whether `signature` signs `signingInput` (`header.payload` as sent) under `algorithm` with `key`
    /// (an HMAC secret, or a PEM public key of the algorithm's family).
    static func verify(_ algorithm: JWTAlgorithm, key: [UInt8], signingInput: Substring, signature: [UInt8]) -> Bool {
        let message = signingInput.utf8
        let pem = String(decoding: key, as: UTF8.self)
        switch algorithm.family {
        case .hmac:
            return LibCrypto.verifyHMAC(algorithm.digest, key: key, message: message, mac: signature)
        case .rsa:
            return LibCrypto.verifyRSA(algorithm.digest, publicKeyPEM: pem, message: message, signature: signature)
        case .ec:
            return LibCrypto.verifyECDSA(algorithm.digest, curveBits: algorithm.curveBits, publicKeyPEM: pem, message: message, signature: signature)
        }
    }

    /// The signature of `signingInput` under `algorithm` with `key` (an HMAC secret, or a PEM
    /// private key of the algorithm's family), for tests and tools that make tokens libjwt 1.10
    /// cannot (it writes `typ: JWT` over any other).
    static func sign(_ algorithm: JWTAlgorithm, key: [UInt8], signingInput: String) -> [UInt8]? {
        let message = signingInput.utf8
        let pem = String(decoding: key, as: UTF8.self)
        switch algorithm.family {
        case .hmac:
            return LibCrypto.hmac(algorithm.digest, key: key, message: message)
        case .rsa:
            return LibCrypto.signRSA(algorithm.digest, privateKeyPEM: pem, message: message)
        case .ec:
            return LibCrypto.signECDSA(algorithm.digest, privateKeyPEM: pem, message: message)
        }
    }
}

extension JWTAlgorithm {
    /// The SHA-2 digest the algorithm's name ends with (RFC 7518 §3.1).
    fileprivate var digest: LibCrypto.SHA2 {
        switch self {
        case .hs256, .rs256, .es256: .sha256
        case .hs384, .rs384, .es384: .sha384
        case .hs512, .rs512, .es512: .sha512
        }
    }

    /// The curve an ECDSA algorithm requires, by its size: P-256, P-384, P-521 (RFC 7518 §3.4).
    fileprivate var curveBits: Int {
        switch digest {
        case .sha256: 256
        case .sha384: 384
        case .sha512: 521
        }
    }
}
