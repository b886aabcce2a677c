/// The first-request deadlines of one event loop's connections, checked in order by one repeated task.
import DequeModule
import NIOCore
import Synchronization

/// Every connection's first request must arrive within the same timeout, so their deadlines come
/// in the order the connections do: a queue per event loop, checked four times a second, stands
/// in for a timer per connection. (NIO cancels a scheduled task by scanning every task scheduled
/// on its loop, which with thousands of sockets' heartbeats cost a connect more than the rest of
/// its handshake's bookkeeping.) A deadline is reported up to `checkEvery` late; the check stops
/// while nothing waits.
final class RequestDeadlines: @unchecked Sendable {
    static let checkEvery = TimeAmount.milliseconds(250)

    /// One queue per event loop, made on first use; each is used on its loop only.
    final class Book: Sendable {
        private let queues = Mutex<[ObjectIdentifier: RequestDeadlines]>([:])

        init() {}

        func deadlines(on eventLoop: any EventLoop) -> RequestDeadlines {
            queues.withLock { queues in
                let key = ObjectIdentifier(eventLoop as AnyObject)
                if let queue = queues[key] { return queue }
                let queue = RequestDeadlines(eventLoop: eventLoop)
                queues[key] = queue
                return queue
            }
        }
    }

    private let eventLoop: any EventLoop
    private var waiting: Deque<(deadline: NIODeadline, handler: Weak)> = []
    private var checking: RepeatedTask?

    private struct Weak {
        weak var value: FirstRequest?
    }

    private init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// `handler.requestTimedOut()` is called once `deadline` passed, if the handler still exists
    /// (it ignores the call once its request arrived).
    func add(_ handler: FirstRequest, deadline: NIODeadline) {
        eventLoop.assertInEventLoop()
        waiting.append((deadline, Weak(value: handler)))
        if checking == nil {
            checking = eventLoop.scheduleRepeatedTask(initialDelay: Self.checkEvery, delay: Self.checkEvery) { [self] _ in check() }
        }
    }

    private func check() {
        let now = NIODeadline.now()
        while let first = waiting.first, first.deadline <= now {
            waiting.removeFirst()
            first.handler.value?.requestTimedOut()
        }
        // Nothing waits (no connection for a whole timeout): stop until the next one.
        if waiting.isEmpty {
            checking?.cancel()
            checking = nil
        }
    }
}
