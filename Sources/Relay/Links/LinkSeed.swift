/// A fresh link's id and resume token, made before the link itself.
import DeviceAuth
import OpenSSLCrypto

/// A fresh link's id and resume token (256 random bits, base64url), made before the link when
/// a fleet must know the link first (a device's link claimed fleet-wide before its `hello`).
struct LinkSeed: Sendable {
    let id: String
    let token: String
    let tokenHash: [UInt8]

    init() {
        id = LibCrypto.randomUUID()
        token = Base64URL.encode(LibCrypto.randomBytes(32))
        tokenHash = LibCrypto.sha256(Array(token.utf8))
    }
}
