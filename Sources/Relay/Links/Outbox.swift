import RelayCore
import Synchronization

/// A link's outgoing messages (an `OutboxBuffer`: `seq`, kept until acked, bounds) handed to
/// the link's current transport: a WebSocket takes them on its event loop (`push`, a batch per drain), an HTTP
/// fallback's writer task waits for them (`next`). Routing appends and returns; it never waits
/// on a socket.
///
/// Bounds and policies:
/// - Kept (unacked) messages: at most `maxMessages` and `maxBytes`; past that the oldest are
///   dropped, and a resume that needs them gets a fresh link instead.
/// - Unsent messages on a live transport: past the same bounds the reader is too slow; the
///   transport is dropped at once (its writer may be stuck on a full socket) and the link
///   detaches, so memory stays bounded.
final class Outbox: Sendable {
    typealias Frame = OutboxBuffer.Frame

    enum Event: Sendable, Equatable {
        /// Frames to write, in order.
        case send([Frame])
        /// Write a close frame with this code and reason, then stop.
        case close(code: UInt16, reason: String)
    }

    private struct CloseRequest {
        var code: UInt16
        var reason: String
    }

    private struct State {
        var buffer: OutboxBuffer
        /// Bumped whenever a transport attaches or detaches; a writer serves one generation.
        var generation = 0
        var attached = false
        var closeRequest: CloseRequest?
        var closeDelivered = false
        var ended = false
        /// Drops the current transport at once (its writer may be stuck on a full socket).
        var dropTransport: (@Sendable () -> Void)?
        var waiter: (generation: Int, continuation: CheckedContinuation<Event?, Never>)?
        /// A transport that takes frames on its own event loop (`push`): asked to drain once per
        /// batch; its writer task only gets the close.
        var push: (@Sendable () -> Void)?
        var pushScheduled = false
    }

    private let state: Mutex<State>

    init(maxMessages: Int, maxBytes: Int) {
        state = Mutex(State(buffer: OutboxBuffer(maxMessages: maxMessages, maxBytes: maxBytes)))
    }

    /// Numbers `message` with the link's next `seq` and keeps it until acked. Discarded once
    /// the link ended; past the unsent bound the live transport is dropped.
    func offer(_ message: OutboundMessage) {
        let (wake, drop, push): ((CheckedContinuation<Event?, Never>, Event?)?, (@Sendable () -> Void)?, (@Sendable () -> Void)?) = state.withLock {
            state in
            guard !state.ended else { return (nil, nil, nil) }
            let overBound = state.buffer.append(message.text(seq:))
            var drop: (@Sendable () -> Void)?
            if overBound, state.attached, let dropTransport = state.dropTransport {
                // Once: the transport is going; its link detaches when it is gone.
                state.dropTransport = nil
                drop = dropTransport
            }
            return (Self.takeWaiter(&state), drop, Self.schedulePush(&state))
        }
        if let (continuation, event) = wake { continuation.resume(returning: event) }
        push?()
        drop?()
    }

    /// The push transport's drain to call, once until it takes what waits for it.
    private static func schedulePush(_ state: inout State) -> (@Sendable () -> Void)? {
        guard let push = state.push, !state.pushScheduled, state.buffer.hasUnsent || closePending(state) else { return nil }
        state.pushScheduled = true
        return push
    }

    private static func closePending(_ state: State) -> Bool {
        state.closeRequest != nil && !state.closeDelivered
    }

    /// The transport of `generation` takes its frames itself, on its own event loop: `drain` is
    /// called (once per batch, from whichever thread offers) and answers with `takePushed`.
    /// When a newer transport replaces it, `drain` is called once more and `takePushed` says so.
    func push(generation: Int, drain: @escaping @Sendable () -> Void) {
        let first: (@Sendable () -> Void)? = state.withLock { state in
            guard state.generation == generation, !state.ended || state.buffer.hasUnsent else { return nil }
            state.push = drain
            state.pushScheduled = false
            return Self.schedulePush(&state)
        }
        first?()
    }

    /// What the push transport of `generation` is to write: every unsent frame, in order, then
    /// the close when one was asked for. Nil when that transport is no longer the link's.
    func takePushed(generation: Int) -> (frames: [Frame], close: (code: UInt16, reason: String)?)? {
        state.withLock { state in
            guard state.generation == generation, state.push != nil else { return nil }
            state.pushScheduled = false
            let frames = state.buffer.takeUnsent()
            guard Self.closePending(state), let request = state.closeRequest else { return (frames, nil) }
            state.closeDelivered = true
            return (frames, (request.code, request.reason))
        }
    }

    /// The client has processed everything up to `seq`: those need not be kept.
    func acknowledge(through seq: Int) {
        state.withLock { $0.buffer.acknowledge(through: seq) }
    }

    /// A new transport attaches. With `lastSeq` (a resume), it will first get every kept
    /// message after it; returns the new writer generation, or nil when that replay cannot be
    /// complete (messages after `lastSeq` were dropped, or `lastSeq` is in the future).
    func attach(resumingAfter lastSeq: Int?, dropTransport: @escaping @Sendable () -> Void) -> Int? {
        let (generation, stale, stalePush): (Int?, CheckedContinuation<Event?, Never>?, (@Sendable () -> Void)?) = state.withLock { state in
            guard !state.ended, state.buffer.rewind(resumingAfter: lastSeq) else { return (nil, nil, nil) }
            state.generation += 1
            state.attached = true
            state.dropTransport = dropTransport
            // The old transport's writer (a waiting task, or a push drain) is told to stop.
            let stalePush = state.push
            state.push = nil
            state.pushScheduled = false
            state.closeRequest = nil
            state.closeDelivered = false
            defer { state.waiter = nil }
            return (state.generation, state.waiter?.continuation, stalePush)
        }
        stale?.resume(returning: nil)
        stalePush?()
        return generation
    }

    /// The transport went away; messages are kept for a resume.
    func detach(generation: Int) {
        let wake: CheckedContinuation<Event?, Never>? = state.withLock { state in
            guard state.generation == generation else { return nil }
            state.generation += 1
            state.attached = false
            state.dropTransport = nil
            state.push = nil
            defer { state.waiter = nil }
            return state.waiter?.continuation
        }
        wake?.resume(returning: nil)
    }

    /// Asks the current transport's writer to close its socket once what is queued is written.
    func close(code: UInt16, reason: String) {
        let (wake, push): ((CheckedContinuation<Event?, Never>, Event?)?, (@Sendable () -> Void)?) = state.withLock { state in
            guard state.closeRequest == nil else { return (nil, nil) }
            state.closeRequest = CloseRequest(code: code, reason: reason)
            return (Self.takeWaiter(&state), Self.schedulePush(&state))
        }
        if let (continuation, event) = wake { continuation.resume(returning: event) }
        push?()
    }

    /// The link ended: nothing more is taken or kept. What its live transport has not written
    /// yet (the last messages, such as the `webrtc_close` of its sessions) still goes out before
    /// its close.
    func end() {
        state.withLock { state in
            state.ended = true
            if state.attached {
                state.buffer.dropSent()
            } else {
                state.buffer.removeAll()
            }
        }
    }

    var isEnded: Bool { state.withLock { $0.ended } }

    /// The next thing for the writer of `generation` to do; nil once its transport is replaced,
    /// after its close was delivered, or on cancellation.
    func next(generation: Int) async -> Event? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Event?, Never>) in
                let ready: Event?? = state.withLock { state in
                    if Task.isCancelled || state.generation != generation { return .some(nil) }
                    if let event = Self.takeEvent(&state) { return .some(event) }
                    if state.closeDelivered { return .some(nil) }
                    state.waiter = (generation, continuation)
                    return .none
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Event?, Never>? in
                defer { state.waiter = nil }
                return state.waiter?.continuation
            }
            waiter?.resume(returning: nil)
        }
    }

    private static func takeWaiter(_ state: inout State) -> (CheckedContinuation<Event?, Never>, Event?)? {
        guard let waiter = state.waiter, waiter.generation == state.generation else { return nil }
        guard let event = takeEvent(&state) else { return nil }
        state.waiter = nil
        return (waiter.continuation, event)
    }

    private static func takeEvent(_ state: inout State) -> Event? {
        if let request = state.closeRequest, !state.closeDelivered, !state.buffer.hasUnsent {
            state.closeDelivered = true
            return .close(code: request.code, reason: request.reason)
        }
        guard state.push == nil, state.buffer.hasUnsent else { return nil }
        return .send(state.buffer.takeUnsent())
    }
}

/// WebSocket close codes the relay uses (contract §3.6).
enum RelayCloseCode {
    static let goingAway: UInt16 = 1001
    static let policyViolation: UInt16 = 1008
    static let tokenExpired: UInt16 = 4001
    static let replaced: UInt16 = 4002
}
