/// libjwt behind one small Swift type: decode a token with a given key and report its algorithm.
import CJWT

#if canImport(Glibc)
import Glibc
#endif

/// The relay's only door to libjwt 1.10. It signs and verifies with a key the caller chose and
/// hands back the algorithm libjwt saw and the claims as JSON text; every policy decision
/// (allowlist, key choice, claims) is the caller's, because libjwt 1.10 makes none of them.
enum LibJWT {
    enum Failure: Error, Equatable {
        /// libjwt refused the token: bad signature, bad encoding, or a header it does not accept.
        case rejected
        /// libjwt could not build a token.
        case encodingFailed
    }

    /// Verifies `token` with `key`, returning the algorithm libjwt verified and the claims JSON.
    /// - Precondition: `key` is not empty (libjwt skips verification entirely with an empty key).
    static func decode(_ token: String, key: [UInt8]) throws(Failure) -> (algorithm: JWTAlgorithm?, claimsJSON: String) {
        precondition(!key.isEmpty, "libjwt verifies nothing with an empty key")
        var handle: OpaquePointer?
        let status = key.withUnsafeBufferPointer { keyBytes in
            jwt_decode(&handle, token, keyBytes.baseAddress, Int32(keyBytes.count))
        }
        guard status == 0, let handle else { throw .rejected }
        defer { jwt_free(handle) }
        let algorithm = jwt_alg_str(jwt_get_alg(handle)).flatMap { JWTAlgorithm(rawValue: String(cString: $0)) }
        guard let json = jwt_get_grants_json(handle, nil) else { throw .rejected }
        defer { free(json) }
        return (algorithm, String(cString: json))
    }

    /// Builds a signed token with the given claims (a JSON object) and header fields.
    static func encode(algorithm: JWTAlgorithm, key: [UInt8], claimsJSON: String, headers: [String: String] = [:]) throws(Failure) -> String {
        var handle: OpaquePointer?
        guard jwt_new(&handle) == 0, let handle else { throw .encodingFailed }
        defer { jwt_free(handle) }
        let algorithmSet = key.withUnsafeBufferPointer { keyBytes in
            jwt_set_alg(handle, jwt_str_alg(algorithm.rawValue), keyBytes.baseAddress, Int32(keyBytes.count))
        }
        guard algorithmSet == 0, jwt_add_grants_json(handle, claimsJSON) == 0 else { throw .encodingFailed }
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) {
            guard jwt_add_header(handle, name, value) == 0 else { throw .encodingFailed }
        }
        guard let encoded = jwt_encode_str(handle) else { throw .encodingFailed }
        defer { free(encoded) }
        return String(cString: encoded)
    }
}
