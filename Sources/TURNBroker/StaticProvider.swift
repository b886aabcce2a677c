/// STUN-only ICE servers from the configuration (no TURN).
import Foundation

/// STUN only, no credentials: `STUN_URIS`. The default provider, and enough on open networks
/// and for development.
public struct StaticProvider: TURNProvider {
    public let stunURIs: [String]

    /// `stunURIs` defaults to Google's and Cloudflare's public STUN servers.
    public init(stunURIs: [String] = StaticProvider.defaultSTUNURIs) {
        self.stunURIs = stunURIs
    }

    public static let defaultSTUNURIs = ["stun:stun.cloudflare.com:3478", "stun:stun.l.google.com:19302"]

    public var name: String { "static" }

    public func mint(ttl: Int, identifier: String) async throws(TURNError) -> CredentialDocument {
        CredentialDocument(iceServers: stunURIs.isEmpty ? [] : [ICEServer(urls: .many(stunURIs))], ttl: ttl, issuedAt: Date())
    }
}
