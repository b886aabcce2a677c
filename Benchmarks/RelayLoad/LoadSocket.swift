import NIOCore
import NIOPosix

/// A minimal WebSocket client for load: the upgrade request and the frames are written and
/// parsed by hand on the load generator's one event loop, so a message costs the generator a
/// few hundred nanoseconds and no task hop. Client frames use the all-zero masking key (legal,
/// and XOR with zero leaves the payload as is). Everything here runs on that one event loop.
final class LoadSocket: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    /// What the socket tells its owner; all called on the event loop.
    struct Callbacks {
        var message: (LoadSocket, UnsafeRawBufferPointer) -> Void
        var closed: (LoadSocket, String) -> Void
    }

    enum Phase { case handshaking, open, closed }

    let path: String
    var callbacks: Callbacks
    private(set) var phase = Phase.handshaking
    private var context: ChannelHandlerContext?
    private var inbound: ByteBuffer?
    private var fragments: ByteBuffer?
    private var dirty = false
    private let flusher: Flusher
    /// The last `seq` acked.
    private var ackedSeq = 0

    init(path: String, flusher: Flusher, callbacks: Callbacks) {
        self.path = path
        self.flusher = flusher
        self.callbacks = callbacks
    }

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    func channelActive(context: ChannelHandlerContext) {
        var request = context.channel.allocator.buffer(capacity: path.utf8.count + 160)
        request.writeString("GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n")
        request.writeString("Sec-WebSocket-Key: bG9hZC1nZW5lcmF0b3Itaw==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        context.writeAndFlush(wrapOutboundOut(request), promise: nil)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        if inbound == nil || inbound!.readableBytes == 0 {
            inbound = bytes
        } else {
            inbound!.writeBuffer(&bytes)
        }
        if phase == .handshaking, !readHandshake() { return }
        while phase == .open, readFrame() {}
        if let buffer = inbound, buffer.readableBytes == 0 { inbound = nil } else { inbound?.discardReadBytes() }
    }

    func channelInactive(context: ChannelHandlerContext) { finish("connection closed") }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        finish("\(error)")
        context.close(promise: nil)
    }

    private func finish(_ why: String) {
        guard phase != .closed else { return }
        phase = .closed
        callbacks.closed(self, why)
    }

    /// Reads the `101 Switching Protocols` answer; anything else closes the socket.
    private func readHandshake() -> Bool {
        guard let view = inbound?.readableBytesView, let end = view.firstRange(of: Array("\r\n\r\n".utf8)) else { return false }
        let head = String(decoding: view[view.startIndex..<end.lowerBound], as: UTF8.self)
        inbound!.moveReaderIndex(forwardBy: end.upperBound - view.startIndex)
        guard head.hasPrefix("HTTP/1.1 101") else {
            finish(String(head.prefix { $0 != "\r" }))
            context?.close(promise: nil)
            return false
        }
        phase = .open
        return true
    }

    /// Parses one whole frame from `inbound`, if there is one.
    private func readFrame() -> Bool {
        guard var buffer = inbound, buffer.readableBytes >= 2 else { return false }
        let first = buffer.readInteger(as: UInt8.self)!
        let second = buffer.readInteger(as: UInt8.self)!
        var length = Int(second & 0x7F)
        if length == 126 {
            guard let value = buffer.readInteger(as: UInt16.self) else { return false }
            length = Int(value)
        } else if length == 127 {
            guard let value = buffer.readInteger(as: UInt64.self) else { return false }
            length = Int(value)
        }
        guard buffer.readableBytes >= length else { return false }
        let payloadStart = buffer.readerIndex
        inbound!.moveReaderIndex(to: payloadStart + length)
        let opcode = first & 0x0F
        let fin = first & 0x80 != 0
        switch opcode {
        case 0x1, 0x0:
            if fin && fragments == nil {
                buffer.withUnsafeReadableBytes { bytes in
                    deliver(UnsafeRawBufferPointer(rebasing: bytes[0..<length]))
                }
            } else {
                var slice = buffer.getSlice(at: payloadStart, length: length)!
                if fragments == nil { fragments = slice } else { fragments!.writeBuffer(&slice) }
                if fin, let whole = fragments {
                    fragments = nil
                    whole.withUnsafeReadableBytes { deliver($0) }
                }
            }
        case 0x8:
            phase = .closed
            writeFrame(opcode: 0x8, payload: [0x03, 0xE8])
            flush()
            let reason = length > 2 ? String(decoding: buffer.getBytes(at: payloadStart + 2, length: length - 2)!, as: UTF8.self) : ""
            let code = length >= 2 ? Int(buffer.getInteger(at: payloadStart, as: UInt16.self)!) : 1005
            callbacks.closed(self, "close \(code) \(reason)")
            context?.close(promise: nil)
            return false
        case 0x9:
            writeFrame(opcode: 0xA, payload: buffer.getBytes(at: payloadStart, length: length)!)
            flush()
        default:
            break
        }
        return true
    }

    /// Hands a message to the owner and acks every `ackEvery` numbered messages, as a client
    /// that keeps the relay's resume buffer short does.
    private func deliver(_ bytes: UnsafeRawBufferPointer) {
        if let seq = Wire.seq(bytes), seq - ackedSeq >= Self.ackEvery {
            ackedSeq = seq
            send("{\"type\":\"ack\",\"seq\":\(seq)}")
        }
        callbacks.message(self, bytes)
    }

    static let ackEvery = 64

    /// Queues a text frame; it goes out at the end of this event-loop turn.
    func send(_ text: String) {
        guard phase == .open else { return }
        writeFrame(opcode: 0x1, utf8: text.utf8)
    }

    private func writeFrame(opcode: UInt8, payload: [UInt8]) {
        writeFrame(opcode: opcode, utf8: payload)
    }

    private func writeFrame<Bytes: Collection<UInt8>>(opcode: UInt8, utf8 payload: Bytes) {
        guard let context else { return }
        let count = payload.count
        var frame = context.channel.allocator.buffer(capacity: count + 14)
        frame.writeInteger(0x80 | opcode)
        if count < 126 {
            frame.writeInteger(UInt8(0x80 | count))
        } else if count < 65536 {
            frame.writeInteger(UInt8(0x80 | 126))
            frame.writeInteger(UInt16(count))
        } else {
            frame.writeInteger(UInt8(0x80 | 127))
            frame.writeInteger(UInt64(count))
        }
        frame.writeInteger(UInt32(0))
        frame.writeBytes(payload)
        context.write(wrapOutboundOut(frame), promise: nil)
        if !dirty {
            dirty = true
            flusher.mark(self)
        }
    }

    func flush() {
        dirty = false
        context?.flush()
    }

    /// Stops or resumes reading from the socket (the slow reader).
    func setReading(_ on: Bool) {
        _ = context?.channel.setOption(ChannelOptions.autoRead, value: on)
    }

    func close() {
        context?.close(promise: nil)
    }
}

/// Flushes every socket written during an event-loop turn once, at the end of the turn.
final class Flusher: @unchecked Sendable {
    private var pending: [LoadSocket] = []
    let loop: any EventLoop

    init(eventLoop: any EventLoop) { self.loop = eventLoop }

    func mark(_ socket: LoadSocket) {
        if pending.isEmpty { loop.execute { self.flushAll() } }
        pending.append(socket)
    }

    func flushAll() {
        let sockets = pending
        pending.removeAll(keepingCapacity: true)
        for socket in sockets { socket.flush() }
    }
}
