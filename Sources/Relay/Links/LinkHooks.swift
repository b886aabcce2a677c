/// What a link holds of its current transport and timers, and what it does once its lock is released.
import NIOCore
import RelayCore

/// A link's hold on its current transport (how to wake its writer, ask it to drain, or drop
/// it) and on its grace and lease timers. Kept under the link's lock next to its machine; each
/// change says what to do once the lock is released (`LinkEffects`), never does it itself.
struct LinkHooks {
    typealias Machine = LinkStateMachine<ContinuousClock.Instant>
    typealias Waiter = CheckedContinuation<Link.Event?, Never>

    /// Drops the current transport at once (its writer may be stuck on a full socket).
    private var drop: (@Sendable () -> Void)?
    /// A writer task waiting for the next event of its generation.
    private var waiter: (generation: Int, continuation: Waiter)?
    /// A transport that takes frames on its own event loop: asked to drain once per batch.
    private var push: (@Sendable () -> Void)?
    private var pushScheduled = false
    private var grace: Scheduled<Void>?
    /// The HTTP lease's timer (contract §7).
    private var lease: Scheduled<Void>?

    /// Whether a push transport takes the link's frames.
    var pushes: Bool { push != nil }

    /// A new transport, dropped with `drop`, replaces the current one: its waiting writer hears
    /// nil, its push transport drains once more (and learns it was replaced), the timers stop.
    mutating func replace(dropping drop: @escaping @Sendable () -> Void, into effects: inout LinkEffects) {
        effects.resume = waiter.map { ($0.continuation, nil) }
        effects.drain = push
        stopTimers(into: &effects)
        self = LinkHooks()
        self.drop = drop
    }

    /// The transport is gone (the link detached): a waiting writer hears nil, the lease stops.
    mutating func release(into effects: inout LinkEffects) {
        stopWriters(into: &effects)
        drop = nil
        stopLease(into: &effects)
    }

    /// The link moves away from under its transport: the transport is dropped and a waiting
    /// writer hears nil; the timers stay until the move ends (a failed move keeps them).
    mutating func abandon(into effects: inout LinkEffects) {
        stopWriters(into: &effects)
        dropTransport(into: &effects)
    }

    private mutating func stopWriters(into effects: inout LinkEffects) {
        effects.resume = waiter.map { ($0.continuation, nil) }
        waiter = nil
        push = nil
        pushScheduled = false
    }

    /// Stops both timers (the link ended or left).
    mutating func stopTimers(into effects: inout LinkEffects) {
        effects.cancel += [grace, lease].compactMap { $0 }
        grace = nil
        lease = nil
    }

    /// Arms the grace timer, replacing any before it.
    mutating func armGrace(_ timer: Scheduled<Void>, into effects: inout LinkEffects) {
        if let grace { effects.cancel.append(grace) }
        grace = timer
    }

    /// Arms the lease timer, replacing any before it.
    mutating func armLease(_ timer: Scheduled<Void>, into effects: inout LinkEffects) {
        if let lease { effects.cancel.append(lease) }
        lease = timer
    }

    /// Stops the lease timer.
    mutating func stopLease(into effects: inout LinkEffects) {
        if let lease { effects.cancel.append(lease) }
        lease = nil
    }

    /// The machine queued a message past its unsent bound: the transport is dropped, once (the
    /// link detaches when it is gone).
    mutating func dropTransport(into effects: inout LinkEffects) {
        effects.drop = drop
        drop = nil
    }

    /// The machine has something for the transport: the waiting writer of the current
    /// generation takes it, or the push transport is asked to drain (once until it takes).
    mutating func wake(_ machine: inout Machine, into effects: inout LinkEffects) {
        if let waiter, waiter.generation == machine.generation, let event = self.event(&machine) {
            self.waiter = nil
            effects.resume = (waiter.continuation, event)
        }
        effects.drain = schedulePush(machine)
    }

    /// A push transport of the current generation takes the frames from now on.
    mutating func setPush(_ drain: @escaping @Sendable () -> Void, machine: Machine, into effects: inout LinkEffects) {
        push = drain
        pushScheduled = false
        effects.drain = schedulePush(machine)
    }

    /// The push transport takes what waits: the next change asks it to drain again.
    mutating func pushTaken() {
        pushScheduled = false
    }

    /// A writer of `generation` waits for its next event.
    mutating func wait(_ continuation: Waiter, generation: Int) {
        waiter = (generation, continuation)
    }

    /// The waiting writer, taken (its task was cancelled).
    mutating func takeWaiter() -> Waiter? {
        defer { waiter = nil }
        return waiter?.continuation
    }

    private mutating func schedulePush(_ machine: Machine) -> (@Sendable () -> Void)? {
        guard let push, !pushScheduled, machine.writerHasWork else { return nil }
        pushScheduled = true
        return push
    }

    /// For a waiting writer (none when a push transport takes the frames): the frames first,
    /// the close once none is left.
    func event(_ machine: inout Machine) -> Link.Event? {
        guard push == nil, machine.writerHasWork,
            case .write(let frames, let close) = machine.take(generation: machine.generation, closeWithFrames: false)
        else { return nil }
        if let close { return .close(code: close.code, reason: close.reason) }
        return frames.isEmpty ? nil : .send(frames)
    }
}

/// What a link does once its lock is released, decided under it.
struct LinkEffects {
    /// A waiting writer to resume, with its event (nil: it stops).
    var resume: (LinkHooks.Waiter, Link.Event?)?
    /// A push transport to ask to drain.
    var drain: (@Sendable () -> Void)?
    /// A transport to drop.
    var drop: (@Sendable () -> Void)?
    /// Timers to cancel.
    var cancel: [Scheduled<Void>] = []
    /// The link has something its store lacks.
    var journal = false
}
