/// Contract §11's reliable sending as a pure value: a link's `cseq` numbers, which are duplicates, which are safe, and when an `ack` is due.

/// What a link knows of the numbers (`cseq`) its client gives its messages. A message is
/// *taken* when it arrives with a number above every number taken before (a lower or equal
/// one is a duplicate: dropped); *done* once the relay handled it for good (routed to the
/// other party, or answered with an error; a session request once its ICE servers came);
/// *safe* once a store holds what it caused (or, with no store, once done). The relay acks
/// the highest safe number; a resumed link's `hello` says it as `acked_cseq`.
///
/// Messages are done in the order they were taken except a few whose slow work runs beside
/// the next ones (`underway`): the done mark stops below the oldest of those.
public struct ClientSequence: Sendable, Equatable {
    /// The highest number taken: a message numbered at or below it is a duplicate.
    public private(set) var taken: Int
    /// Taken numbers whose handling is still under way, ascending.
    private var underway: [Int] = []
    /// The highest number known safe: what the last `ack` said (or will say).
    public private(set) var safe: Int
    /// An ack of `safe` is to be written (it moved, or a duplicate asked for it).
    public private(set) var ackDue = false

    /// A link that has taken and stored everything up to `through` (0: a new link).
    public init(through: Int = 0) {
        taken = through
        safe = through
    }

    /// Every message taken and not under way is done up to here.
    public var done: Int { underway.first.map { $0 - 1 } ?? taken }

    /// A message numbered `cseq` arrives: true when it is new (taken, and under way until
    /// `finish`); false for a duplicate, whose ack is due now when it is safe already (else
    /// the ack comes when it is).
    public mutating func arrive(_ cseq: Int) -> Bool {
        guard cseq > taken else {
            if cseq <= safe { ackDue = true }
            return false
        }
        taken = cseq
        underway.append(cseq)
        return true
    }

    /// The message numbered `cseq` was handled for good. Whether `done` moved.
    public mutating func finish(_ cseq: Int) -> Bool {
        guard let index = underway.firstIndex(of: cseq) else { return false }
        underway.remove(at: index)
        return index == 0
    }

    /// What was done up to `cseq` is stored now: the ack is due when that moves `safe`.
    public mutating func stored(through cseq: Int) {
        guard cseq > safe else { return }
        safe = cseq
        ackDue = true
    }

    /// The ack to write now, if one is due: the highest safe number.
    public mutating func takeAck() -> Int? {
        guard ackDue else { return nil }
        ackDue = false
        return safe
    }

    /// A transport resumes the link: its `hello` carries `acked_cseq`, which stands for the ack.
    public mutating func announced() {
        ackDue = false
    }
}
