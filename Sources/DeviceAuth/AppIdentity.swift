/// Who an app connection acts for, read from a verified app token.
public struct AppIdentity: Sendable, Equatable {
    /// The user id (`sub`).
    public var userID: String
    /// When the token stops being valid, in Unix seconds (`exp`, without leeway).
    public var expiresAt: Double
    /// The device ids the token itself grants (`devices`), or nil when the claim is absent.
    public var devices: Set<String>?

    public init(userID: String, expiresAt: Double, devices: Set<String>?) {
        self.userID = userID
        self.expiresAt = expiresAt
        self.devices = devices
    }
}
