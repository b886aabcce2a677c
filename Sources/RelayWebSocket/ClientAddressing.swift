/// Who the client is at the IP level: the peer, or what a trusted proxy says (X-Forwarded-For, PROXY protocol v1/v2).
import Glibc
import NIOCore
import NIOHTTP1

/// An IPv4 or IPv6 network (`10.0.0.0/8`, `::1/128`, or one address).
public struct CIDR: Sendable, Equatable, CustomStringConvertible {
    let bytes: [UInt8]
    let prefix: Int

    public init?(_ text: String) {
        let parts = text.split(separator: "/", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        guard let bytes = Self.bytes(of: parts[0]) else { return nil }
        let prefix = parts.count == 2 ? Int(parts[1]) : bytes.count * 8
        guard let prefix, (0...(bytes.count * 8)).contains(prefix) else { return nil }
        self.bytes = bytes
        self.prefix = prefix
    }

    public var description: String { "\(bytes.count == 4 ? bytes.map(String.init).joined(separator: ".") : "ipv6")/\(prefix)" }

    /// The address's bytes (4 or 16), nil when it is not an IP address.
    static func bytes(of address: String) -> [UInt8]? {
        var v4 = in_addr()
        if inet_pton(AF_INET, address, &v4) == 1 {
            return withUnsafeBytes(of: v4) { Array($0) }
        }
        var v6 = in6_addr()
        if inet_pton(AF_INET6, address, &v6) == 1 {
            let bytes = withUnsafeBytes(of: v6) { Array($0) }
            // An IPv4-mapped IPv6 address (::ffff:a.b.c.d) is that IPv4 address.
            if bytes[0..<10].allSatisfy({ $0 == 0 }) && bytes[10] == 0xFF && bytes[11] == 0xFF { return Array(bytes[12...]) }
            return bytes
        }
        return nil
    }

    public func contains(_ address: String) -> Bool {
        guard let other = Self.bytes(of: address), other.count == bytes.count else { return false }
        var bits = prefix
        for (mine, theirs) in zip(bytes, other) where bits > 0 {
            let mask: UInt8 = bits >= 8 ? 0xFF : ~(0xFF >> UInt8(bits))
            guard mine & mask == theirs & mask else { return false }
            bits -= 8
        }
        return true
    }
}

/// How the relay tells who a client is: the TCP peer's address, unless the peer is a trusted
/// proxy (`RELAY_TRUSTED_PROXIES`): then the address a PROXY protocol header (v1 or v2) gave,
/// and from there `X-Forwarded-For` read right to left past every trusted hop. The result goes
/// to the routes in the `Relay-Client-Address` header, which the edge always sets itself
/// (whatever a client sent under that name is dropped).
public struct ClientAddressing: Sendable {
    public static let header = "Relay-Client-Address"

    public let trusted: [CIDR]

    public init(trusted: [CIDR] = []) {
        self.trusted = trusted
    }

    public func isTrusted(_ address: String) -> Bool {
        trusted.contains { $0.contains(address) }
    }

    /// The client's address for a request on `channel` whose `X-Forwarded-For` fields are
    /// `forwardedFor`. On the channel's event loop.
    func clientAddress(on channel: any Channel, forwardedFor: [String]) -> String? {
        guard let peer = channel.remoteAddress?.ipAddress else { return nil }
        guard isTrusted(peer) else { return peer }
        var address = peer
        if let proxied = try? channel.pipeline.syncOperations.handler(type: ProxyHeaderReader.self).source {
            address = proxied
            guard isTrusted(address) else { return address }
        }
        let hops = forwardedFor.flatMap { $0.split(separator: ",") }.map { String($0.filter { $0 != " " && $0 != "\t" }) }
        for hop in hops.reversed() {
            guard CIDR.bytes(of: hop) != nil else { break }
            address = hop
            if !isTrusted(hop) { break }
        }
        return address
    }

    /// `head` with `Relay-Client-Address` set to what the edge found (and nothing else under that name).
    func stamped(_ head: HTTPRequestHead, on channel: any Channel) -> HTTPRequestHead {
        var head = head
        head.headers.remove(name: Self.header)
        if let address = clientAddress(on: channel, forwardedFor: head.headers["X-Forwarded-For"]) {
            head.headers.add(name: Self.header, value: address)
        }
        return head
    }
}

/// First on the pipeline of a connection from a trusted proxy: reads a PROXY protocol header
/// (v1 text or v2 binary, HAProxy's specification) when the connection starts with one, keeps
/// the client address it names, and passes every other byte on unchanged.
final class ProxyHeaderReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer

    /// The client's address the header gave (nil: none, `LOCAL`, `UNKNOWN`, or not read yet).
    private(set) var source: String?
    private var buffered: ByteBuffer?
    private var decided = false

    static let v2Signature: [UInt8] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A]
    static let v1Prefix = Array("PROXY ".utf8)

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !decided else { return context.fireChannelRead(data) }
        var bytes = unwrapInboundIn(data)
        if var earlier = buffered {
            earlier.writeBuffer(&bytes)
            bytes = earlier
        }
        switch read(&bytes) {
        case .needMore:
            buffered = bytes
        case .invalid:
            context.close(promise: nil)
        case .done:
            decided = true
            buffered = nil
            if bytes.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(bytes)) }
        }
    }

    private enum Outcome { case needMore, invalid, done }

    /// Consumes a PROXY header from the front of `bytes` if there is one.
    private func read(_ bytes: inout ByteBuffer) -> Outcome {
        let view = Array(bytes.readableBytesView.prefix(232))
        if Self.v2Signature.starts(with: view.prefix(12)) && view.count < 16 { return .needMore }
        if view.starts(with: Self.v2Signature) {
            let length = Int(view[14]) << 8 | Int(view[15])
            guard bytes.readableBytes >= 16 + length else { return length > 216 ? .invalid : .needMore }
            let command = view[12] & 0x0F
            let family = view[13] >> 4
            let body = Array(bytes.readableBytesView.dropFirst(16).prefix(length))
            if command == 0x1 && family == 0x1 && body.count >= 12 {
                source = body[0..<4].map(String.init).joined(separator: ".")
            } else if command == 0x1 && family == 0x2 && body.count >= 36 {
                var address = in6_addr()
                withUnsafeMutableBytes(of: &address) { $0.copyBytes(from: body[0..<16]) }
                var text = [CChar](repeating: 0, count: Int(INET6_ADDRSTRLEN))
                if inet_ntop(AF_INET6, &address, &text, socklen_t(text.count)) != nil { source = String(cString: text) }
            }
            bytes.moveReaderIndex(forwardBy: 16 + length)
            return .done
        }
        if Self.v1Prefix.starts(with: view.prefix(6)) && view.count < 6 { return .needMore }
        guard view.starts(with: Self.v1Prefix) else { return .done }
        guard let end = view.indices.first(where: { view[$0...].starts(with: [0x0D, 0x0A]) }) else {
            return view.count >= 107 ? .invalid : .needMore
        }
        let fields = String(decoding: view[..<end], as: UTF8.self).split(separator: " ")
        if fields.count == 6, fields[1] == "TCP4" || fields[1] == "TCP6", CIDR.bytes(of: String(fields[2])) != nil {
            source = String(fields[2])
        } else if !(fields.count >= 2 && fields[1] == "UNKNOWN") {
            return .invalid
        }
        bytes.moveReaderIndex(forwardBy: end + 2)
        return .done
    }
}
