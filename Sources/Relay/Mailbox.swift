import DequeModule
import Synchronization

/// The bounded queue between whoever routes a message to a link and the one task that writes
/// to the link's socket. Routing never waits on a socket: it appends here and returns.
///
/// Bound and policy: past `maxMessages` queued frames or `maxBytes` queued bytes the reader is
/// too slow; the mailbox stops taking messages and asks the writer to drop the socket.
final class Mailbox: Sendable {
    enum Event: Sendable, Equatable {
        /// Frames to write, in order.
        case send([String])
        /// Write a close frame with this code and reason, then stop.
        case close(code: UInt16, reason: String)
    }

    enum Offer: Sendable, Equatable {
        case queued
        /// The mailbox is closing or closed; the message was discarded.
        case closed
        /// This message pushed the queue past its bound; the mailbox is now closing.
        case overflowed
    }

    private struct State {
        var nextSeq = 1
        var queue: Deque<String> = []
        var queuedBytes = 0
        var closeRequest: (code: UInt16, reason: String)?
        var closeDelivered = false
        var waiter: CheckedContinuation<Event?, Never>?
    }

    private let state = Mutex(State())
    let maxMessages: Int
    let maxBytes: Int

    init(maxMessages: Int, maxBytes: Int) {
        self.maxMessages = maxMessages
        self.maxBytes = maxBytes
    }

    /// Numbers `message` with the link's next `seq` and queues it.
    @discardableResult
    func offer(_ message: OutboundMessage) -> Offer {
        let (result, waiter, event): (Offer, CheckedContinuation<Event?, Never>?, Event?) = state.withLock { state in
            guard state.closeRequest == nil else { return (.closed, nil, nil) }
            let text = message.text(seq: state.nextSeq)
            state.nextSeq += 1
            state.queue.append(text)
            state.queuedBytes += text.utf8.count
            var result = Offer.queued
            if state.queue.count > maxMessages || state.queuedBytes > maxBytes {
                state.queue.removeAll()
                state.queuedBytes = 0
                state.closeRequest = (RelayCloseCode.policyViolation, "Reader too slow")
                result = .overflowed
            }
            guard let waiter = state.waiter else { return (result, nil, nil) }
            state.waiter = nil
            return (result, waiter, Self.takeEvent(&state))
        }
        waiter?.resume(returning: event)
        return result
    }

    /// Asks the writer to close the socket once what is queued has been written.
    func close(code: UInt16, reason: String) {
        let (waiter, event): (CheckedContinuation<Event?, Never>?, Event?) = state.withLock { state in
            guard state.closeRequest == nil else { return (nil, nil) }
            state.closeRequest = (code, reason)
            guard let waiter = state.waiter else { return (nil, nil) }
            state.waiter = nil
            return (waiter, Self.takeEvent(&state))
        }
        waiter?.resume(returning: event)
    }

    /// True once a close was asked for (by `close` or an overflow).
    var isClosing: Bool { state.withLock { $0.closeRequest != nil } }

    /// How many frames wait to be written.
    var queuedCount: Int { state.withLock { $0.queue.count } }

    /// The next thing for the writer to do; nil after the close was delivered or on cancellation.
    func next() async -> Event? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Event?, Never>) in
                let ready: Event?? = state.withLock { state in
                    if Task.isCancelled { return .some(nil) }
                    if let event = Self.takeEvent(&state) { return .some(event) }
                    if state.closeDelivered { return .some(nil) }
                    state.waiter = continuation
                    return .none
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            let waiter = state.withLock { state -> CheckedContinuation<Event?, Never>? in
                defer { state.waiter = nil }
                return state.waiter
            }
            waiter?.resume(returning: nil)
        }
    }

    private static func takeEvent(_ state: inout State) -> Event? {
        if !state.queue.isEmpty {
            let frames = Array(state.queue)
            state.queue.removeAll(keepingCapacity: true)
            state.queuedBytes = 0
            return .send(frames)
        }
        if let request = state.closeRequest, !state.closeDelivered {
            state.closeDelivered = true
            return .close(code: request.code, reason: request.reason)
        }
        return nil
    }
}

/// WebSocket close codes the relay uses (contract §3.6).
enum RelayCloseCode {
    static let normal: UInt16 = 1000
    static let goingAway: UInt16 = 1001
    static let policyViolation: UInt16 = 1008
    static let messageTooLarge: UInt16 = 1009
    static let tokenExpired: UInt16 = 4001
    static let replaced: UInt16 = 4002
}
