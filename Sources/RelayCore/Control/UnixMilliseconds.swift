/// Wall-clock instants in Unix milliseconds, for what several nodes and the next process share.

/// An instant of the wall clock, in milliseconds since the Unix epoch. A control lease's expiry
/// is one (contract §12: `expires_at_ms`): the nodes of a fleet and the process after a restart
/// read the same deadline from the store, which no process's monotonic clock could give them.
/// The caller reads the clock; the rules only compare and add.
public struct UnixMilliseconds: InstantProtocol, Hashable, Sendable, Codable, CustomStringConvertible {
    public var milliseconds: Int64

    public init(_ milliseconds: Int64) {
        self.milliseconds = milliseconds
    }

    public func advanced(by duration: Duration) -> Self {
        Self(milliseconds + Self.milliseconds(of: duration))
    }

    public func duration(to other: Self) -> Duration {
        .milliseconds(other.milliseconds - milliseconds)
    }

    public static func < (lhs: Self, rhs: Self) -> Bool { lhs.milliseconds < rhs.milliseconds }

    /// Whole milliseconds of `duration`, rounded down.
    public static func milliseconds(of duration: Duration) -> Int64 {
        let (seconds, attoseconds) = duration.components
        return seconds * 1000 + attoseconds / 1_000_000_000_000_000
    }

    /// Kept as the bare number (what `expires_at_ms` says on the wire).
    public init(from decoder: any Decoder) throws {
        milliseconds = try decoder.singleValueContainer().decode(Int64.self)
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.singleValueContainer()
        try container.encode(milliseconds)
    }

    public var description: String { "\(milliseconds) ms" }
}
