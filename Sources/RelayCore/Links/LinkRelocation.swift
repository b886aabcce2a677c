/// Where a link's messages go while and once it moves to another node of the fleet: its rules
/// as data, with no clock and no transport.

/// A link moving to another node (its client resumed there). While the move is under way,
/// what is sent to the link waits here, in order; once it is done, all of that and whatever
/// comes after follows the link to `Destination`; a move that fails sends what waited here.
public enum LinkRelocation<Message, Destination> {
    /// The link stays here.
    case staying
    /// The move is under way: what was sent since, in order.
    case underway([Message])
    /// The link lives at `Destination` now.
    case moved(Destination)

    /// Where one message sent to the link goes.
    public enum Disposition {
        /// Here, to the link's own transport.
        case here
        /// Nowhere yet: it waits for the move to end.
        case held
        /// To where the link moved.
        case follow(Destination)
    }

    /// Whether a move is under way or done: the link takes nothing more from its client here.
    @inlinable public var isMoving: Bool {
        if case .staying = self { return false }
        return true
    }

    /// Where the link moved, once it did.
    @inlinable public var destination: Destination? {
        if case .moved(let destination) = self { return destination }
        return nil
    }

    /// `message` is sent to the link: where it goes (held ones are kept here).
    @inlinable public mutating func offer(_ message: Message) -> Disposition {
        switch self {
        case .staying:
            return .here
        case .underway(var waiting):
            waiting.append(message)
            self = .underway(waiting)
            return .held
        case .moved(let destination):
            return .follow(destination)
        }
    }

    /// A move begins; false when one is already under way or done.
    @inlinable public mutating func begin() -> Bool {
        guard case .staying = self else { return false }
        self = .underway([])
        return true
    }

    /// The move failed: the link stays; what waited, in order, is to go here.
    @inlinable public mutating func abort() -> [Message] {
        guard case .underway(let waiting) = self else { return [] }
        self = .staying
        return waiting
    }

    /// The move is done: what waited, in order, is to go to `destination`, before anything
    /// offered from now on (send it before another offer can see `.follow`). Nil when no move
    /// was under way.
    @inlinable public mutating func finish(at destination: Destination) -> [Message]? {
        guard case .underway(let waiting) = self else { return nil }
        self = .moved(destination)
        return waiting
    }
}

// Inlinable: a link offers every message it is sent here first (the hot path), and a generic
// type's methods called from another module are otherwise not specialized.
extension LinkRelocation: Sendable where Message: Sendable, Destination: Sendable {}
extension LinkRelocation.Disposition: Sendable where Message: Sendable, Destination: Sendable {}
