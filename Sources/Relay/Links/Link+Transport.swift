/// What a link's transports do with it: attach and detach, lease and grace, take its frames.
import NIOCore
import RelayCore
import Synchronization

/// The side of a link its transports see (a WebSocket on its event loop, an HTTP fallback's
/// requests): they attach and go, hold an HTTP lease, and take the link's frames, pushed or
/// awaited. Each call changes the link's machine and hooks under its lock (`change`).
extension Link {
    /// A transport attaches (see `LinkStateMachine.attach`); `dropTransport` drops it if it
    /// falls behind. The superseded writer is told to stop, the grace and lease timers are
    /// cancelled.
    func attach(resumingAfter lastSeq: Int?, dropTransport: @escaping @Sendable () -> Void) -> (generation: Int, previous: Machine.Previous)? {
        let action = change { state, effects in
            let restored = state.machine.isRestored
            let action = state.machine.attach(resumingAfter: lastSeq)
            guard case .attached = action else { return action }
            if restored {
                // Its first resume may have renumbered what it kept: the store gets it anew.
                state.stored.rewriteAll()
            }
            if case .attached(_, .detached) = action {
                // The store says whether it is attached (a fleet's nodes read it).
                state.stored.row = false
            }
            if restored || !state.stored.row { effects.journal = state.stored.list() }
            state.hooks.replace(dropping: dropTransport, into: &effects)
            return action
        }
        guard case .attached(let generation, let previous) = action else { return nil }
        return (generation, previous)
    }

    /// The transport of `generation` is gone: the link detaches (`armGrace` arms the timer for
    /// the end of its grace, after the given delay) or, without a grace, is to end.
    func transportEnded(generation: Int, now: ContinuousClock.Instant = .now, armGrace: (Duration) -> Scheduled<Void>) -> Machine.DetachAction {
        detach(now: now, armGrace: armGrace) { $0.transportEnded(generation: generation, now: now) }
    }

    /// A restored link waits for its client until its grace deadline: `arm` arms the timer
    /// (after the given delay) that ends it.
    func armGrace(now: ContinuousClock.Instant = .now, _ arm: (Duration) -> Scheduled<Void>) {
        change { state, effects in
            guard case .detached(let deadline) = state.machine.attachment else { return }
            state.hooks.armGrace(arm(deadline - now), into: &effects)
        }
    }

    /// The lease timer of `generation` fired: detaches the link as `transportEnded` does if that
    /// lease is still on and over.
    func leaseExpired(generation: Int, now: ContinuousClock.Instant = .now, armGrace: (Duration) -> Scheduled<Void>) -> Machine.DetachAction {
        detach(now: now, armGrace: armGrace) { $0.leaseExpired(generation: generation, now: now) }
    }

    private func detach(
        now: ContinuousClock.Instant,
        armGrace: (Duration) -> Scheduled<Void>,
        _ event: (inout Machine) -> Machine.DetachAction
    ) -> Machine.DetachAction {
        change { state, effects in
            let action = event(&state.machine)
            guard case .detached(let deadline) = action else { return action }
            state.stored.row = false
            effects.journal = state.stored.list()
            state.hooks.release(into: &effects)
            state.hooks.armGrace(armGrace(deadline - now), into: &effects)
            return action
        }
    }

    /// Contract §7: the HTTP transport of `generation` keeps the link for the resume grace
    /// with no request waiting; `arm` arms the timer (after the given delay) that ends it.
    func lease(generation: Int, now: ContinuousClock.Instant = .now, arm: (Duration) -> Scheduled<Void>) {
        change { state, effects in
            guard let deadline = state.machine.lease(generation: generation, now: now) else { return }
            state.hooks.armLease(arm(deadline - now), into: &effects)
        }
    }

    /// A request of the transport of `generation` waits again: its lease ends.
    func endLease(generation: Int) {
        change { state, effects in
            state.machine.endLease(generation: generation)
            if state.machine.leaseUntil == nil { state.hooks.stopLease(into: &effects) }
        }
    }

    /// Asks the current transport to close once what is queued is written.
    func close(code: UInt16, reason: String) {
        wakeWriter { $0.machine.requestClose(.init(code: code, reason: reason)) }
    }

    /// Drops the current transport now, whatever it has not written (a client that never reads
    /// at a shutdown): what its client has not acked stays kept for the resume.
    func cutTransport() {
        change { state, effects in state.hooks.dropTransport(into: &effects) }
    }

    /// The transport of `generation` takes its frames itself, on its own event loop: `drain` is
    /// called (once per batch, from whichever thread offers) and answers with `takePushed`.
    /// When a newer transport replaces it, `drain` is called once more and `takePushed` says so.
    func push(generation: Int, drain: @escaping @Sendable () -> Void) {
        change { state, effects in
            guard state.machine.generation == generation, !state.machine.isEnded || state.machine.writerHasWork else { return }
            state.hooks.setPush(drain, machine: state.machine, into: &effects)
        }
    }

    /// What the push transport of `generation` is to write: every unsent frame, in order, then
    /// the close when one was asked for. Nil when that transport is no longer the link's.
    func takePushed(generation: Int) -> (frames: [Frame], close: Machine.CloseRequest?)? {
        state.withLock { state in
            guard state.hooks.pushes, case .write(let frames, let close) = state.machine.take(generation: generation, closeWithFrames: true) else {
                return nil
            }
            state.hooks.pushTaken()
            return (frames, close)
        }
    }

    /// The next thing for the waiting writer of `generation` to do; nil once its transport is
    /// replaced, after its close was delivered, or on cancellation.
    func next(generation: Int) async -> Event? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Event?, Never>) in
                let ready: Event?? = state.withLock { state in
                    if Task.isCancelled || state.machine.generation != generation { return .some(nil) }
                    if let event = state.hooks.event(&state.machine) { return .some(event) }
                    if state.machine.closeWasDelivered { return .some(nil) }
                    state.hooks.wait(continuation, generation: generation)
                    return .none
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            state.withLock { $0.hooks.takeWaiter() }?.resume(returning: nil)
        }
    }

    /// What the writer of `generation` is to do now, without waiting: nil when nothing is ready
    /// (or that transport is no longer the link's).
    func ready(generation: Int) -> Event? {
        state.withLock { state in state.machine.generation == generation ? state.hooks.event(&state.machine) : nil }
    }
}
