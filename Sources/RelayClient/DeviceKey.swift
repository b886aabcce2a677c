/// HMAC-SHA256 for signing a device's connects: OpenSSL's libcrypto on Linux (as the relay),
/// CryptoKit on Apple's platforms.
#if canImport(CryptoKit)
import CryptoKit
#else
import OpenSSLCrypto
#endif

enum DeviceKey {
    /// hex(HMAC-SHA256(key, message)), lowercase.
    static func hmacSHA256Hex(key: String, message: String) -> String {
        #if canImport(CryptoKit)
        let code = HMAC<SHA256>.authenticationCode(for: Array(message.utf8), using: SymmetricKey(data: Array(key.utf8)))
        return code.map { byte in (byte < 16 ? "0" : "") + String(byte, radix: 16) }.joined()
        #else
        return LibCrypto.hmacSHA256(key: Array(key.utf8), message: Array(message.utf8)).hexString
        #endif
    }
}
