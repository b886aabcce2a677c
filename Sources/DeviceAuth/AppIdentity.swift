/// Who an app connection acts for, read from a verified app token.
import RelayCore

public struct AppIdentity: Sendable, Equatable {
    /// The user id (`sub`).
    public var userID: String
    /// When the token stops being valid, in Unix seconds (`exp`, without leeway).
    public var expiresAt: Double
    /// The device ids the token itself grants (`devices`), or nil when the claim is absent.
    public var devices: Set<String>?
    /// What the app may do with a device's control (claim `control`, contract §12; `drive`
    /// when absent).
    public var controlRole: ControlRole

    public init(userID: String, expiresAt: Double, devices: Set<String>?, controlRole: ControlRole = .drive) {
        self.userID = userID
        self.expiresAt = expiresAt
        self.devices = devices
        self.controlRole = controlRole
    }
}
