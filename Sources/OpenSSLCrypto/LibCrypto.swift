/// OpenSSL's libcrypto behind one small Swift type: HMAC, SHA-1 and SHA-256, constant-time compare, random bytes.
import CCrypto

/// The relay's only door to OpenSSL's libcrypto: HMAC, constant-time comparison, random bytes
/// and public-key inspection. No OpenSSL pointer leaves this type.
public enum LibCrypto {
    /// HMAC-SHA256 of `message` under `key`.
    public static func hmacSHA256(key: some Collection<UInt8>, message: some Collection<UInt8>) -> [UInt8] {
        hmac(EVP_sha256(), key: Array(key), message: Array(message))
    }

    /// HMAC-SHA1 of `message` under `key` (the TURN REST API's credential).
    public static func hmacSHA1(key: some Collection<UInt8>, message: some Collection<UInt8>) -> [UInt8] {
        hmac(EVP_sha1(), key: Array(key), message: Array(message))
    }

    private static func hmac(_ digest: OpaquePointer?, key: [UInt8], message: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let result = key.withUnsafeBufferPointer { keyBytes in
            message.withUnsafeBufferPointer { messageBytes in
                output.withUnsafeMutableBufferPointer { out in
                    HMAC(digest, keyBytes.baseAddress, Int32(keyBytes.count), messageBytes.baseAddress, messageBytes.count, out.baseAddress, &length)
                }
            }
        }
        // HMAC only fails on allocation failure; there is no safe way to go on without a MAC.
        precondition(result != nil, "OpenSSL HMAC failed: \(drainErrorQueue())")
        return Array(output.prefix(Int(length)))
    }

    /// SHA-1 of `message` (the WebSocket handshake's `Sec-WebSocket-Accept`; not for secrets).
    public static func sha1(_ message: some Collection<UInt8>) -> [UInt8] {
        digest(EVP_sha1(), Array(message))
    }

    /// SHA-256 of `message` (what the store keeps of a resume token).
    public static func sha256(_ message: some Collection<UInt8>) -> [UInt8] {
        digest(EVP_sha256(), Array(message))
    }

    private static func digest(_ kind: OpaquePointer?, _ message: [UInt8]) -> [UInt8] {
        var output = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        let result = message.withUnsafeBufferPointer { bytes in
            output.withUnsafeMutableBufferPointer { out in EVP_Digest(bytes.baseAddress, bytes.count, out.baseAddress, &length, kind, nil) }
        }
        precondition(result == 1, "OpenSSL EVP_Digest failed: \(drainErrorQueue())")
        return Array(output.prefix(Int(length)))
    }

    /// Compares two byte strings in time that depends only on their length.
    public static func constantTimeEquals(_ lhs: [UInt8], _ rhs: [UInt8]) -> Bool {
        guard lhs.count == rhs.count else { return false }
        guard !lhs.isEmpty else { return true }
        return lhs.withUnsafeBytes { l in
            rhs.withUnsafeBytes { r in CRYPTO_memcmp(l.baseAddress, r.baseAddress, l.count) == 0 }
        }
    }

    /// `count` bytes from OpenSSL's CSPRNG.
    public static func randomBytes(_ count: Int) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        let result = bytes.withUnsafeMutableBufferPointer { RAND_bytes($0.baseAddress, Int32(count)) }
        precondition(result == 1, "OpenSSL RAND_bytes failed: \(drainErrorQueue())")
        return bytes
    }

    /// The kind of public key a PEM document holds.
    public enum PublicKeyKind: Sendable, Equatable {
        case rsa
        case ec
    }

    /// Reads a PEM `PUBLIC KEY` and tells its kind, or nil when OpenSSL cannot read it as RSA or EC.
    public static func publicKeyKind(pem: String) -> PublicKeyKind? {
        let bytes = Array(pem.utf8)
        return bytes.withUnsafeBytes { raw -> PublicKeyKind? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            guard let key = PEM_read_bio_PUBKEY(bio, nil, nil, nil) else {
                _ = drainErrorQueue()
                return nil
            }
            defer { EVP_PKEY_free(key) }
            switch EVP_PKEY_get_base_id(key) {
            case EVP_PKEY_RSA: return .rsa
            case EVP_PKEY_EC: return .ec
            default: return nil
            }
        }
    }

    /// The PEM `PUBLIC KEY` of an RSA key given by its modulus and public exponent (big-endian
    /// bytes, as a JWK's `n` and `e`), or nil when OpenSSL refuses them.
    public static func rsaPublicKeyPEM(modulus: [UInt8], exponent: [UInt8]) -> String? {
        guard let n = BN_bin2bn(modulus, Int32(modulus.count), nil) else { return nil }
        defer { BN_free(n) }
        guard let e = BN_bin2bn(exponent, Int32(exponent.count), nil) else { return nil }
        defer { BN_free(e) }
        return publicKeyPEM(type: "RSA") { builder in
            guard OSSL_PARAM_BLD_push_BN(builder, relay_param_rsa_n, n) == 1, OSSL_PARAM_BLD_push_BN(builder, relay_param_rsa_e, e) == 1 else {
                return nil
            }
            return OSSL_PARAM_BLD_to_param(builder)
        }
    }

    /// The PEM `PUBLIC KEY` of an EC key on `group` (OpenSSL's name: prime256v1, secp384r1,
    /// secp521r1) at the point (`x`, `y`), as a JWK gives them, or nil when it is not on the curve.
    public static func ecPublicKeyPEM(group: String, x: [UInt8], y: [UInt8]) -> String? {
        let point = [0x04] + x + y
        return publicKeyPEM(type: "EC") { builder in
            // The builder keeps pointers to the values until to_param copies them.
            group.withCString { name in
                point.withUnsafeBytes { bytes in
                    guard OSSL_PARAM_BLD_push_utf8_string(builder, relay_param_group, name, 0) == 1,
                        OSSL_PARAM_BLD_push_octet_string(builder, relay_param_public_key, bytes.baseAddress, bytes.count) == 1
                    else { return nil }
                    return OSSL_PARAM_BLD_to_param(builder)
                }
            }
        }
    }

    /// A public key of `type` made from the parameters `build` pushes and turns into an array
    /// (nil on failure), written as PEM.
    private static func publicKeyPEM(type: String, build: (OpaquePointer) -> UnsafeMutablePointer<OSSL_PARAM>?) -> String? {
        defer { ERR_clear_error() }
        guard let builder = OSSL_PARAM_BLD_new() else { return nil }
        defer { OSSL_PARAM_BLD_free(builder) }
        guard let parameters = build(builder) else { return nil }
        defer { OSSL_PARAM_free(parameters) }
        guard let context = EVP_PKEY_CTX_new_from_name(nil, type, nil) else { return nil }
        defer { EVP_PKEY_CTX_free(context) }
        var key: OpaquePointer?
        guard EVP_PKEY_fromdata_init(context) == 1, EVP_PKEY_fromdata(context, &key, relay_evp_pkey_public_key, parameters) == 1, let key else {
            return nil
        }
        defer { EVP_PKEY_free(key) }
        // A point not on the curve, or a key OpenSSL would not use, is no key.
        guard let check = EVP_PKEY_CTX_new_from_pkey(nil, key, nil) else { return nil }
        defer { EVP_PKEY_CTX_free(check) }
        guard EVP_PKEY_public_check(check) == 1 else { return nil }
        guard let bio = BIO_new(BIO_s_mem()) else { return nil }
        defer { BIO_free(bio) }
        guard PEM_write_bio_PUBKEY(bio, key) == 1 else { return nil }
        var data: UnsafeMutablePointer<CChar>?
        let length = relay_bio_get_mem_data(bio, &data)
        guard let data, length > 0 else { return nil }
        return String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
    }

    /// Empties OpenSSL's thread-local error queue, returning its first entry as text.
    @discardableResult
    public static func drainErrorQueue() -> String {
        let code = ERR_get_error()
        defer { ERR_clear_error() }
        guard code != 0 else { return "no OpenSSL error" }
        var buffer = [CChar](repeating: 0, count: 256)
        ERR_error_string_n(code, &buffer, buffer.count)
        return String(decoding: buffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}

extension Collection<UInt8> {
    /// Lowercase hexadecimal.
    public var hexString: String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(count * 2)
        for byte in self {
            out.append(digits[Int(byte >> 4)])
            out.append(digits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
