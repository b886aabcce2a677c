/// ICE servers for a self-hosted coturn: time-limited credentials from its shared secret.
import Foundation
import OpenSSLCrypto

/// A self-hosted coturn with `use-auth-secret` (the TURN REST API): username
/// `"<expiry unix>:<id>"`, credential base64(HMAC-SHA1(shared secret, username)).
public struct CoturnProvider: TURNProvider {
    /// `TURN_SHARED_SECRET` (coturn's `static-auth-secret`)
    public let sharedSecret: String
    /// `TURN_URIS`
    public let turnURIs: [String]
    /// `STUN_URIS`
    public let stunURIs: [String]

    public init(sharedSecret: String, turnURIs: [String], stunURIs: [String]) {
        self.sharedSecret = sharedSecret
        self.turnURIs = turnURIs
        self.stunURIs = stunURIs
    }

    public var name: String { "coturn" }

    public func mint(ttl: Int, identifier: String) async throws(TURNError) -> CredentialDocument {
        let now = Date()
        let username = "\(Int(now.timeIntervalSince1970) + ttl):\(identifier)"
        var servers: [ICEServer] = []
        if !stunURIs.isEmpty { servers.append(ICEServer(urls: .many(stunURIs))) }
        servers.append(ICEServer(urls: .many(turnURIs), username: username, credential: Self.credential(username: username, secret: sharedSecret)))
        return CredentialDocument(iceServers: servers, ttl: ttl, issuedAt: now)
    }

    /// The TURN REST API password for `username`.
    public static func credential(username: String, secret: String) -> String {
        Data(LibCrypto.hmacSHA1(key: Array(secret.utf8), message: Array(username.utf8))).base64EncodedString()
    }
}
