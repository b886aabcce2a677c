/// Why a session ended and who ended it, as both parties read them in `webrtc_close` (contract §3.3).

/// Why a session ended: one of the relay's own reasons, or whatever a party gave in its
/// `webrtc_close`.
public struct SessionCloseReason: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: String
    public init(rawValue: String) { self.rawValue = rawValue }

    /// A party's `webrtc_close` without a reason.
    public static let normal = Self(rawValue: "normal")
    /// The device declined with `webrtc_reject`.
    public static let rejected = Self(rawValue: "rejected")
    /// No answer within the set-up timeout.
    public static let setupTimeout = Self(rawValue: "setup_timeout")
    /// ICE servers could not be minted for the request.
    public static let turnError = Self(rawValue: "turn_error")
    /// A party's link ended (its grace ran out, or a device was replaced).
    public static let peerDisconnected = Self(rawValue: "peer_disconnected")
    public static let deviceRevoked = Self(rawValue: "device_revoked")
    /// An operator ended it through the admin API.
    public static let admin = Self(rawValue: "admin")
    public static let shutdown = Self(rawValue: "shutdown")

    public var description: String { rawValue }
}

/// Who ended a session.
public enum SessionCloser: String, Sendable, Equatable {
    case app
    case device
    case relay
}
