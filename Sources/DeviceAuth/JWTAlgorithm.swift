/// A JWS algorithm the relay can verify, spelled exactly as in a token's header.
public enum JWTAlgorithm: String, Sendable, CaseIterable, Hashable {
    case hs256 = "HS256"
    case hs384 = "HS384"
    case hs512 = "HS512"
    case rs256 = "RS256"
    case rs384 = "RS384"
    case rs512 = "RS512"
    case es256 = "ES256"
    case es384 = "ES384"
    case es512 = "ES512"

    /// The kind of key an algorithm verifies with. A key is chosen by the family the relay
    /// expects, never by what the token claims, so no HS/RS confusion can arise.
    public enum Family: Sendable, Hashable {
        case hmac
        case rsa
        case ec
    }

    public var family: Family {
        switch self {
        case .hs256, .hs384, .hs512: .hmac
        case .rs256, .rs384, .rs512: .rsa
        case .es256, .es384, .es512: .ec
        }
    }
}
