/// What a TURN provider does (mint, revoke) and the ttl limits.
import Foundation

/// Mints ICE servers for one session (or one HTTP caller).
public protocol TURNProvider: Sendable {
    /// A short name for logs and metrics (`static`, `cloudflare`, `coturn`).
    var name: String { get }

    /// Mints a credential document valid for `ttl` seconds. `identifier` names who it is for
    /// (the session id, or `user:<sub>`), for providers that record it.
    func mint(ttl: Int, identifier: String) async throws(TURNError) -> CredentialDocument

    /// Withdraws a document's credentials early, where the provider supports it. Best effort:
    /// failures are counted and logged, never thrown.
    func revoke(_ document: CredentialDocument) async
}

extension TURNProvider {
    public func revoke(_ document: CredentialDocument) async {}
}

/// Why ICE servers could not be minted. `detail` is safe to show a client: it never holds a
/// credential or an API token.
public struct TURNError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Kind: Sendable, Equatable {
        case upstreamFailed
        case upstreamTimedOut
    }

    public var kind: Kind
    public var detail: String

    public init(_ kind: Kind, _ detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { detail }
}

/// The ttl bounds a client may ask for (Cloudflare's maximum is 48 h).
public enum TURNLimits {
    public static let ttlRange = 60...172_800
    public static let defaultTTL = 3600
}
