/// A mock clock's instants for the state machines' tests: time moves only when a test says so.

/// An instant of a clock that starts at zero and moves only when a test advances it.
struct TestInstant: InstantProtocol, CustomStringConvertible {
    var offset: Duration

    static let zero = TestInstant(offset: .zero)

    func advanced(by duration: Duration) -> TestInstant { TestInstant(offset: offset + duration) }
    func duration(to other: TestInstant) -> Duration { other.offset - offset }
    static func < (lhs: TestInstant, rhs: TestInstant) -> Bool { lhs.offset < rhs.offset }

    var description: String { "t+\(offset)" }
}

/// A mock clock: `now` moves only with `advance`.
struct TestClock {
    var now = TestInstant.zero

    mutating func advance(_ duration: Duration) { now = now.advanced(by: duration) }
}
