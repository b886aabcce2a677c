/// OpenSSL's libcrypto behind one small Swift type: HMAC, digests, signature verification, constant-time compare, random bytes, public keys.
import CCrypto

/// The relay's only door to OpenSSL's libcrypto: HMAC, constant-time comparison, random bytes,
/// public keys, and signature checks for the tokens libjwt cannot verify. No OpenSSL pointer
/// leaves this type.
public enum LibCrypto {
    /// HMAC-SHA256 of `message` under `key`.
    public static func hmacSHA256(key: some Collection<UInt8>, message: some Collection<UInt8>) -> [UInt8] {
        hmac(EVP_sha256(), key: Array(key), message: Array(message))
    }

    /// HMAC-SHA1 of `message` under `key` (the TURN REST API's credential).
    public static func hmacSHA1(key: some Collection<UInt8>, message: some Collection<UInt8>) -> [UInt8] {
        hmac(EVP_sha1(), key: Array(key), message: Array(message))
    }

    /// A SHA-2 digest, as JWS algorithms name them by their size.
    public enum SHA2: Sendable, Equatable {
        case sha256
        case sha384
        case sha512

        var evp: OpaquePointer? {
            switch self {
            case .sha256: EVP_sha256()
            case .sha384: EVP_sha384()
            case .sha512: EVP_sha512()
            }
        }
    }

    /// The HMAC of `message` under `key` with `digest`.
    public static func hmac(_ digest: SHA2, key: [UInt8], message: some Collection<UInt8>) -> [UInt8] {
        hmac(digest.evp, key: key, message: Array(message))
    }

    /// Whether `mac` is the HMAC of `message` under `key` with `digest`, compared in constant time.
    public static func verifyHMAC(_ digest: SHA2, key: [UInt8], message: some Collection<UInt8>, mac: [UInt8]) -> Bool {
        constantTimeEquals(hmac(digest, key: key, message: message), mac)
    }

    /// Whether `signature` is an RSASSA-PKCS1-v1_5 signature of `message` with `digest` by the
    /// RSA key in `publicKeyPEM`.
    public static func verifyRSA(_ digest: SHA2, publicKeyPEM: String, message: some Collection<UInt8>, signature: [UInt8]) -> Bool {
        withPublicKey(pem: publicKeyPEM, kind: .rsa) { key in
            verify(digest, key: key, message: Array(message), der: signature)
        } ?? false
    }

    /// Whether `signature` (JWS's form: r then s, each as long as the curve's order) is an ECDSA
    /// signature of `message` with `digest` by the EC key in `publicKeyPEM`. `curveBits` is the
    /// size the algorithm requires (ES256 P-256, ES384 P-384, ES512 P-521): a key on another
    /// curve does not verify.
    public static func verifyECDSA(
        _ digest: SHA2,
        curveBits: Int,
        publicKeyPEM: String,
        message: some Collection<UInt8>,
        signature: [UInt8]
    ) -> Bool {
        let half = (curveBits + 7) / 8
        guard signature.count == 2 * half else { return false }
        return withPublicKey(pem: publicKeyPEM, kind: .ec) { key -> Bool in
            guard EVP_PKEY_get_bits(key) == Int32(curveBits), let der = ecdsaDER(r: signature.prefix(half), s: signature.suffix(half)) else {
                return false
            }
            return verify(digest, key: key, message: Array(message), der: der)
        } ?? false
    }

    /// An RSASSA-PKCS1-v1_5 signature of `message` with `digest` by the RSA key in
    /// `privateKeyPEM`, or nil when that is no RSA private key. (Tools and tests make tokens with it.)
    public static func signRSA(_ digest: SHA2, privateKeyPEM: String, message: some Collection<UInt8>) -> [UInt8]? {
        withPrivateKey(pem: privateKeyPEM, kind: .rsa) { key in sign(digest, key: key, message: Array(message)) } ?? nil
    }

    /// An ECDSA signature of `message` with `digest` by the EC key in `privateKeyPEM`, in JWS's
    /// form (r then s, each as long as the curve's order), or nil when that is no EC private key.
    public static func signECDSA(_ digest: SHA2, privateKeyPEM: String, message: some Collection<UInt8>) -> [UInt8]? {
        withPrivateKey(pem: privateKeyPEM, kind: .ec) { key -> [UInt8]? in
            let half = (Int(EVP_PKEY_get_bits(key)) + 7) / 8
            guard let der = sign(digest, key: key, message: Array(message)) else { return nil }
            return der.withUnsafeBufferPointer { buffer -> [UInt8]? in
                var cursor = buffer.baseAddress
                guard let signature = d2i_ECDSA_SIG(nil, &cursor, der.count) else { return nil }
                defer { ECDSA_SIG_free(signature) }
                var raw = [UInt8](repeating: 0, count: 2 * half)
                let written = raw.withUnsafeMutableBufferPointer { out in
                    BN_bn2binpad(ECDSA_SIG_get0_r(signature), out.baseAddress, Int32(half)) == half
                        && BN_bn2binpad(ECDSA_SIG_get0_s(signature), out.baseAddress! + half, Int32(half)) == half
                }
                return written ? raw : nil
            }
        } ?? nil
    }

    /// EVP_DigestSign: a DER signature (ECDSA) or a raw one (RSA PKCS#1 v1.5).
    private static func sign(_ digest: SHA2, key: OpaquePointer, message: [UInt8]) -> [UInt8]? {
        guard let context = EVP_MD_CTX_new() else { return nil }
        defer { EVP_MD_CTX_free(context) }
        var length = 0
        guard EVP_DigestSignInit(context, nil, digest.evp, nil, key) == 1,
            EVP_DigestSign(context, nil, &length, message, message.count) == 1
        else { return nil }
        var signature = [UInt8](repeating: 0, count: length)
        guard EVP_DigestSign(context, &signature, &length, message, message.count) == 1 else { return nil }
        return Array(signature.prefix(length))
    }

    /// Runs `body` with the private key in `pem` when it is of `kind`; nil otherwise.
    private static func withPrivateKey<T>(pem: String, kind: PublicKeyKind, _ body: (OpaquePointer) -> T) -> T? {
        withKey(pem: pem, kind: kind, read: { PEM_read_bio_PrivateKey($0, nil, nil, nil) }, body)
    }

    /// The DER `ECDSA-Sig-Value` of (r, s), which is what OpenSSL verifies.
    private static func ecdsaDER(r: ArraySlice<UInt8>, s: ArraySlice<UInt8>) -> [UInt8]? {
        guard let signature = ECDSA_SIG_new() else { return nil }
        defer { ECDSA_SIG_free(signature) }
        let r = Array(r)
        let s = Array(s)
        guard let rNumber = BN_bin2bn(r, Int32(r.count), nil) else { return nil }
        guard let sNumber = BN_bin2bn(s, Int32(s.count), nil) else {
            BN_free(rNumber)
            return nil
        }
        // On success the signature owns both numbers.
        guard ECDSA_SIG_set0(signature, rNumber, sNumber) == 1 else {
            BN_free(rNumber)
            BN_free(sNumber)
            return nil
        }
        let length = i2d_ECDSA_SIG(signature, nil)
        guard length > 0 else { return nil }
        var der = [UInt8](repeating: 0, count: Int(length))
        let written = der.withUnsafeMutableBufferPointer { buffer -> Int32 in
            var cursor = buffer.baseAddress
            return i2d_ECDSA_SIG(signature, &cursor)
        }
        return written == length ? der : nil
    }

    /// Runs `body` with the public key in `pem` when it is of `kind`; nil otherwise.
    private static func withPublicKey<T>(pem: String, kind: PublicKeyKind, _ body: (OpaquePointer) -> T) -> T? {
        withKey(pem: pem, kind: kind, read: { PEM_read_bio_PUBKEY($0, nil, nil, nil) }, body)
    }

    /// Runs `body` with the key `read` finds in `pem` when it is of `kind`; nil otherwise.
    private static func withKey<T>(pem: String, kind: PublicKeyKind, read: (OpaquePointer) -> OpaquePointer?, _ body: (OpaquePointer) -> T) -> T? {
        defer { ERR_clear_error() }
        let bytes = Array(pem.utf8)
        return bytes.withUnsafeBytes { raw -> T? in
            guard let bio = BIO_new_mem_buf(raw.baseAddress, Int32(raw.count)) else { return nil }
            defer { BIO_free(bio) }
            guard let key = read(bio) else { return nil }
            defer { EVP_PKEY_free(key) }
            let expected = kind == .rsa ? EVP_PKEY_RSA : EVP_PKEY_EC
            guard EVP_PKEY_get_base_id(key) == expected else { return nil }
            return body(key)
        }
    }

    /// EVP_DigestVerify of a DER-encoded (ECDSA) or raw (RSA PKCS#1 v1.5) signature.
    private static func verify(_ digest: SHA2, key: OpaquePointer, message: [UInt8], der: [UInt8]) -> Bool {
        guard let context = EVP_MD_CTX_new() else { return false }
        defer { EVP_MD_CTX_free(context) }
        guard EVP_DigestVerifyInit(context, nil, digest.evp, nil, key) == 1 else { return false }
        return EVP_DigestVerify(context, der, der.count, message, message.count) == 1
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

    /// A random (version 4) UUID in lowercase, from OpenSSL's CSPRNG. Foundation's `UUID()` on
    /// Linux opens and reads `/dev/urandom` each time: three system calls on every connect.
    public static func randomUUID() -> String {
        var bytes = randomBytes(16)
        bytes[6] = bytes[6] & 0x0F | 0x40
        bytes[8] = bytes[8] & 0x3F | 0x80
        var text = Array(bytes.hexString.utf8)
        // 8-4-4-4-12, the dashes put in from the last one back.
        for position in [20, 16, 12, 8] { text.insert(UInt8(ascii: "-"), at: position) }
        return String(decoding: text, as: UTF8.self)
    }

    /// The kind of public key a PEM document holds.
    public enum PublicKeyKind: Sendable, Equatable {
        case rsa
        case ec
    }

    /// Reads a PEM `PUBLIC KEY` and tells its kind, or nil when OpenSSL cannot read it as RSA or EC.
    public static func publicKeyKind(pem: String) -> PublicKeyKind? {
        withPublicKey(pem: pem, kind: .rsa) { _ in PublicKeyKind.rsa } ?? withPublicKey(pem: pem, kind: .ec) { _ in PublicKeyKind.ec }
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
    /// Lowercase hexadecimal. Inlinable, so it is specialized where it is used (a device's
    /// connect makes two).
    @inlinable
    public var hexString: String {
        String(unsafeUninitializedCapacity: count * 2) { buffer in
            var index = 0
            for byte in self {
                let high = byte >> 4
                let low = byte & 0x0F
                buffer[index] = high < 10 ? 0x30 + high : 0x57 + high
                buffer[index + 1] = low < 10 ? 0x30 + low : 0x57 + low
                index += 2
            }
            return index
        }
    }
}
