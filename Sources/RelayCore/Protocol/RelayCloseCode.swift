/// The WebSocket close codes of the contract.

/// WebSocket close codes the relay uses (contract §3.6).
public enum RelayCloseCode {
    public static let goingAway: UInt16 = 1001
    public static let policyViolation: UInt16 = 1008
    public static let tokenExpired: UInt16 = 4001
    public static let replaced: UInt16 = 4002
}
