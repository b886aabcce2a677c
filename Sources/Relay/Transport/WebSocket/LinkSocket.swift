/// One WebSocket as a transport of a link: `hello`, the link's frames out, messages in, the token's expiry.
import DequeModule
import DeviceAuth
import Foundation
import NIOCore
import NIOWebSocket
import RelayCore
import RelayWebSocket

/// One WebSocket as a transport of a link, on its event loop: `hello` first, then the link's
/// frames are written as its outbox offers them (a batch per flush, replaying what a resumed
/// link missed), messages read are handed to the switchboard where they are read, and an app's
/// socket closes (4001) when its token expires. A message that waits on something slow (a
/// watch's registry reads) holds back the messages after it until it is done, so they keep
/// their order; past a few held back, reading pauses. A session request waiting for its ICE
/// servers runs beside the messages after it.
final class LinkSocket: WebSocketEndpoint {
    private let connection: LinkConnection
    private let identity: ClientIdentity
    private let resume: ResumeRequest?
    private let seed: LinkSeed?
    private var socket: WebSocketConnection?
    private var link: Link?
    private var generation = 0
    private var busy = false
    private var readingPaused = false
    private var waiting: Deque<String> = []
    private var expiry: Scheduled<Void>?

    init(connection: LinkConnection, identity: ClientIdentity, resume: ResumeRequest?, seed: LinkSeed?) {
        self.connection = connection
        self.identity = identity
        self.resume = resume
        self.seed = seed
    }

    private var switchboard: Switchboard { connection.switchboard }

    func opened(_ socket: WebSocketConnection) {
        self.socket = socket
        let channel: any Channel = socket.channel
        let admission = switchboard.admit(identity, resume: resume, seed: seed, dropTransport: { channel.close(promise: nil) })
        link = admission.link
        generation = admission.generation
        socket.write(text: connection.hello(admission.link, resumed: admission.resumed).text(seq: nil))
        socket.flush()
        let this = NIOLoopBound(self, eventLoop: channel.eventLoop)
        // The drain runs on the loop's next turn even when offered from the loop itself, so
        // what else this turn offers goes out in the same write.
        admission.link.push(generation: admission.generation) { channel.eventLoop.execute { this.value.drain() } }
        if admission.link.party == .app { watchTokenExpiry() }
    }

    /// Writes what the link holds for this transport, if the socket can take it.
    private func drain() {
        guard let socket, let link, socket.isOpen, socket.isWritable else { return }
        guard let (frames, close) = link.takePushed(generation: generation) else {
            // A newer transport took the link over: this socket is done.
            socket.close(.normalClosure, reason: nil)
            return
        }
        for frame in frames { socket.write(text: frame.text) }
        if let close {
            socket.close(WebSocketErrorCode(codeNumber: Int(close.code)), reason: close.reason)
        } else if !frames.isEmpty {
            socket.flush()
        }
    }

    func writable() { drain() }

    func received(text: String) {
        guard busy else { return handle(text) }
        waiting.append(text)
        // Past a few held back, stop reading: the socket's own buffers hold the rest.
        if waiting.count >= Self.heldBackBeforePausing, !readingPaused {
            readingPaused = true
            socket?.setReading(false)
        }
    }

    static let heldBackBeforePausing = 32

    private func handle(_ text: String) {
        guard let link, let socket else { return }
        let eventLoop = socket.channel.eventLoop
        let work: @Sendable () async -> Void
        switch switchboard.receive(text: text, from: link) {
        case .refused, .handled:
            return
        case .alongside(let beside):
            switchboard.errands.run(on: EventLoopTaskExecutor(eventLoop), beside)
            return
        case .pending(let pending):
            work = pending
        }
        busy = true
        let this = NIOLoopBound(self, eventLoop: socket.channel.eventLoop)
        // On the socket's own event loop: what the work does between its waits costs no hop
        // to another thread and back.
        switchboard.errands.run(on: EventLoopTaskExecutor(eventLoop)) {
            await work()
            eventLoop.execute { this.value.finishedWaiting() }
        }
    }

    /// The slow message is done: the ones that arrived meanwhile, in order, then the socket.
    private func finishedWaiting() {
        busy = false
        while !busy, let text = waiting.popFirst() { handle(text) }
        if readingPaused, waiting.count < Self.heldBackBeforePausing {
            readingPaused = false
            socket?.setReading(true)
        }
    }

    func receivedBinary(_ data: ByteBuffer) {
        guard let link else { return }
        switchboard.handleBinary(from: link)
    }

    func closed() {
        expiry?.cancel()
        // The connection holds this endpoint and this holds the connection: let both go.
        socket = nil
        waiting.removeAll()
        guard let link else { return }
        switchboard.transportEnded(link, generation: generation)
    }

    /// Contract §1.1: without a fresh token (`auth`) by `exp` + leeway, close with 4001. An
    /// `auth` may move `exp` meanwhile; the check reads it again when it fires.
    private func watchTokenExpiry() {
        guard let link, let validUntil = link.tokenValidUntil, let socket else { return }
        let now = Date().timeIntervalSince1970
        if link.tokenHasExpired(at: now) {
            link.close(code: RelayCloseCode.tokenExpired, reason: "Token expired")
            return
        }
        let this = NIOLoopBound(self, eventLoop: socket.channel.eventLoop)
        expiry = socket.channel.eventLoop.scheduleTask(in: Self.expiryCheckDelay(validUntil: validUntil, now: now)) { this.value.watchTokenExpiry() }
    }

    /// When to look at a token's expiry again: just after it, and at least daily, so that no
    /// `exp` becomes a delay too large to represent (the verifier refuses times past the year
    /// 9999, and this holds for any finite time).
    static func expiryCheckDelay(validUntil: Double, now: Double) -> TimeAmount {
        let remaining = min(max(validUntil - now, 0), 86_400)
        return .milliseconds(Int64(remaining * 1000) + 1)
    }
}

/// Runs a task's jobs on an event loop (a task prefers it with `Task(executorPreference:)`).
final class EventLoopTaskExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) { self.eventLoop = eventLoop }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute { job.runSynchronously(on: self.asUnownedTaskExecutor()) }
    }
}
