import DeviceAuth
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOWebSocket
import WSCore

/// Runs one WebSocket as the transport of a link: `hello` first, then one task writes what the
/// link's mailbox holds while this one reads and hands frames to the switchboard.
struct LinkConnection {
    let switchboard: Switchboard
    let maxMessageBytes: Int
    let mailboxMessages: Int
    let mailboxBytes: Int
    let heartbeatMilliseconds: Int
    let resumeGraceMilliseconds: Int

    func run(identity: ClientIdentity, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter, logger: Logger) async throws {
        let mailbox = Mailbox(maxMessages: mailboxMessages, maxBytes: mailboxBytes)
        let link: Link
        switch identity {
        case .app(let app): link = .app(app, mailbox: mailbox)
        case .device(let device): link = .device(device.deviceID, mailbox: mailbox)
        }
        let hello = OutboundMessage(
            "hello",
            [
                "link_id": .string(link.id),
                "resume_token": .string(link.resumeToken),
                "heartbeat_ms": .number(Double(heartbeatMilliseconds)),
                "resume_grace_ms": .number(Double(resumeGraceMilliseconds)),
                "resumed": .bool(false),
            ]
        )
        try await outbound.write(.text(hello.text(seq: nil)))
        switchboard.attach(link)
        defer { switchboard.detach(link) }

        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                while let event = await mailbox.next() {
                    switch event {
                    case .send(let frames):
                        for frame in frames { try await outbound.write(.text(frame)) }
                    case .close(let code, let reason):
                        try await outbound.close(WebSocketErrorCode(codeNumber: Int(code)), reason: reason)
                        return
                    }
                }
            }
            defer { group.cancelAll() }
            for try await message in inbound.messages(maxSize: maxMessageBytes) {
                switch message {
                case .text(let text): await switchboard.handle(text: text, from: link)
                case .binary: switchboard.handleBinary(from: link)
                }
            }
        }
    }
}
