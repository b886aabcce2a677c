import DeviceAuth
import Foundation
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import WSCore

/// Runs one WebSocket as a transport of a link: `hello` first, then one task writes what the
/// link's outbox holds (replaying what a resumed link missed), one reads and hands frames to
/// the switchboard, and for apps one closes the socket (4001) when the token expires.
struct LinkConnection {
    let switchboard: Switchboard
    let maxMessageBytes: Int
    let heartbeatMilliseconds: Int
    let resumeGraceMilliseconds: Int
    /// Clock skew tolerated on `exp` before closing with 4001.
    let tokenLeeway: Duration

    /// What a client asks for when it resumes: `resume_token` and `last_seq` query parameters.
    struct Resume: Sendable {
        var token: String
        var lastSeq: Int
    }

    func run(
        identity: ClientIdentity,
        resume: Resume?,
        inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter,
        context: SocketContext
    ) async throws {
        let admission = switchboard.admit(identity, resume: resume.map { ($0.token, $0.lastSeq) }, dropTransport: context.drop)
        let link = admission.link
        let hello = hello(link, resumed: admission.resumed)
        defer { switchboard.transportEnded(link, generation: admission.generation) }
        try await outbound.write(.text(hello.text(seq: nil)))
        // Messages go out from the channel's event loop, a batch per flush; the writer task
        // below only closes. The hello was queued first, so it stays first.
        let writer = FrameWriter(channel: context.channel, outbox: link.outbox, generation: admission.generation)
        context.writability.notify(writer.drain)
        link.outbox.push(generation: admission.generation, drain: writer.schedule)

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while let event = await link.outbox.next(generation: admission.generation) {
                    switch event {
                    case .send(let frames):
                        // Only for a transport that does not push (kept for completeness).
                        for frame in frames { try await outbound.write(.text(frame.text)) }
                    case .close(let code, let reason):
                        try await outbound.close(WebSocketErrorCode(codeNumber: Int(code)), reason: reason)
                        try await awaitCloseReply()
                    }
                }
                // A newer transport took the link over: this socket is done.
            }
            if link.party == .app {
                group.addTask { try await closeAtTokenExpiry(link) }
            }
            group.addTask {
                for try await message in inbound.messages(maxSize: maxMessageBytes) {
                    switch message {
                    case .text(let text): await switchboard.handle(text: text, from: link)
                    case .binary: switchboard.handleBinary(from: link)
                    }
                }
            }
            defer { group.cancelAll() }
            // The first to finish (reader at end of input, writer superseded) ends the socket;
            // a reader's error (1009, 1007) propagates so the handler closes with its code.
            try await group.next()
        }
    }

    /// The first message on every new connection (contract §4), without `seq`.
    func hello(_ link: Link, resumed: Bool) -> OutboundMessage {
        OutboundMessage(
            "hello",
            [
                "link_id": .string(link.id),
                "resume_token": .string(link.resumeToken),
                "heartbeat_ms": .number(Double(heartbeatMilliseconds)),
                "resume_grace_ms": .number(Double(resumeGraceMilliseconds)),
                "resumed": .bool(resumed),
            ]
        )
    }

    /// After a close frame, the client's reply ends the reader (and this task with the group).
    /// A client that never replies is cut off after `closeReplyTimeout`: returning ends the
    /// group, and the socket closes.
    private func awaitCloseReply() async throws {
        try await Task.sleep(for: Self.closeReplyTimeout)
    }

    static let closeReplyTimeout = Duration.seconds(10)

    /// Contract §1.1: without a fresh token (`auth`) by `exp` + leeway, close with 4001.
    private func closeAtTokenExpiry(_ link: Link) async throws {
        while let identity = link.appIdentity {
            let deadline = Date(timeIntervalSince1970: identity.expiresAt) + TimeInterval(tokenLeeway.components.seconds)
            let remaining = deadline.timeIntervalSinceNow
            if remaining <= 0 {
                link.outbox.close(code: RelayCloseCode.tokenExpired, reason: "Token expired")
                try await awaitCloseReply()
                return
            }
            // An `auth` may move `exp` while this sleeps; the loop reads it again.
            try await Task.sleep(for: .milliseconds(Int(remaining * 1000) + 1))
        }
    }
}

/// Writes a link's frames on its WebSocket's event loop: everything unsent in one batch, one
/// flush. While the socket cannot take more (a slow reader), frames wait in the outbox, whose
/// bound drops the transport; the channel's writability coming back drains again.
struct FrameWriter: Sendable {
    let channel: any Channel
    let outbox: Outbox
    let generation: Int

    /// Called by the outbox when frames are waiting (once per batch, from any thread). Even on
    /// the loop itself the drain waits for the loop's next task: what else is offered
    /// meanwhile goes out with it, in one write.
    func schedule() {
        channel.eventLoop.execute { drain() }
    }

    /// On the event loop: writes what is unsent, if the channel can take it.
    func drain() {
        guard channel.isWritable, let frames = outbox.takePushed(generation: generation), !frames.isEmpty else { return }
        for frame in frames {
            let data = channel.allocator.buffer(string: frame.text)
            channel.write(WebSocketFrame(fin: true, opcode: .text, data: data), promise: nil)
        }
        channel.flush()
    }
}
