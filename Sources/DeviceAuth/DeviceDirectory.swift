/// What the relay knows of a registered device.
public struct DeviceRecord: Sendable, Equatable {
    public var deviceID: String
    /// Up to two secrets valid at once, so a secret can be rotated without downtime.
    public var secrets: [String]
    /// User ids allowed to open sessions to the device.
    public var owners: Set<String>
    public var revoked: Bool

    public init(deviceID: String, secrets: [String], owners: Set<String> = [], revoked: Bool = false) {
        self.deviceID = deviceID
        self.secrets = secrets
        self.owners = owners
        self.revoked = revoked
    }
}

/// Where device records come from (the registry). DeviceAuth only reads it.
public protocol DeviceDirectory: Sendable {
    /// The record for `deviceID`, or nil when the device is not registered.
    func device(_ deviceID: String) async throws -> DeviceRecord?
}
