/// The edge (issue "The edge"): pings, the WebSocket handshake and HTTP requests as hostile or broken clients send them.
import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import RelayWebSocket
import Testing

/// Control frames: a client's pings cost the relay a bounded amount, and only a client that
/// reads stays connected.
@Suite(.timeLimit(.minutes(1))) struct PingFloodTests {
    @Test func aClientFloodingPingsIsClosedWith1008() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            try client.send(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            // 500 pings of 125 bytes in one go, more than the 50 a burst may hold. The relay
            // half-closes after its close frame and drops what still comes, so the flood does
            // not turn its close into a reset (which would discard the close frame unread).
            let ping = RawFrame.make(RawFrame.ping, [UInt8](repeating: 7, count: 125))
            try client.send(Array((0..<500).map { _ in ping }.joined()))
            let (bytes, _) = try await client.readUntilEnd(within: .seconds(10))
            let frames = RawFrame.parse(bytes)
            #expect(RawFrame.closeCode(frames) == 1008)
            // The burst's pings were answered, the rest were not.
            let pongs = frames.filter { $0.opcode == RawFrame.pong }.count
            #expect(pongs <= 50, "\(pongs) pongs")
        }
    }

    @Test func pingsWithinTheLimitAreAnsweredWithTheirPayload() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            _ = try await client.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            for number in 0..<3 {
                let payload = Array("ping \(number)".utf8)
                try client.send(RawFrame.make(RawFrame.ping, payload))
                let pong = try await onOwnThread {
                    var bytes: [UInt8] = []
                    while true {
                        let (more, ending) = try client.receive(timeout: .seconds(5))
                        bytes += more
                        if ending != nil || more.isEmpty { return nil as [UInt8]? }
                        if let pong = RawFrame.parse(bytes).first(where: { $0.opcode == RawFrame.pong }) { return pong.payload }
                    }
                }
                #expect(pong == payload)
            }
        }
    }

    @Test func aClientThatDoesNotReadCannotStayOpenWithPongsOfItsOwn() async throws {
        try await TestRelay.run(["RELAY_HEARTBEAT_S": "1"]) { relay in
            let client = try RawConnection.open(port: relay.port)
            try client.send(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            let start = ContinuousClock.now
            // Unsolicited pongs every 200 ms, none echoing the relay's pings.
            let (bytes, ending) = try await onOwnThread { () -> ([UInt8], RawConnection.Ending?) in
                var bytes: [UInt8] = []
                while ContinuousClock.now - start < .seconds(10) {
                    try? client.send(RawFrame.make(RawFrame.pong, Array("still here".utf8)))
                    let (more, ending) = try client.receive(timeout: .milliseconds(200))
                    bytes += more
                    if let ending { return (bytes, ending) }
                }
                return (bytes, nil)
            }
            let elapsed = ContinuousClock.now - start
            #expect(ending != nil, "still open after \(elapsed)")
            #expect(RawFrame.closeCode(RawFrame.parse(bytes)) == 1001)
            // Two missed pongs at one a second: about three seconds.
            #expect(elapsed < .seconds(6), "\(elapsed)")
        }
    }
}

@Suite(.timeLimit(.minutes(1))) struct HandshakeTests {
    @Test func theUpgradeAnswerCarriesRFC6455sAcceptValueAndTheHelloFollows() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            // RFC 6455 §1.3's example key and its accept value.
            let answer = try await client.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            #expect(answer.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"))
            #expect(answer.contains("\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"))
            #expect(answer.lowercased().contains("\r\nupgrade: websocket\r\n"))
        }
    }

    @Test func anUpgradeRequestArrivingInPiecesIsAnswered() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            let request = Array(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())").utf8)
            // Split inside the blank line that ends the head, the first piece given time to be read alone.
            try client.send(Array(request.dropLast(3)))
            let early = try await onOwnThread { try client.receive(timeout: .milliseconds(200)) }
            #expect(early.bytes.isEmpty && early.ending == nil)
            let answer = try await client.request(String(decoding: request.suffix(3), as: UTF8.self))
            #expect(answer.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), "\(answer)")
        }
    }

    @Test func anUpgradeIsReadWhateverTheCaseOfItsFieldsAndWithConnectionListingMore() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            // As Firefox sends it: "keep-alive, Upgrade"; names in any case.
            let answer = try await client.request(
                "GET /ws/device?\(relay.deviceQuery()) HTTP/1.1\r\nHOST: 127.0.0.1\r\nupgrade: WebSocket\r\nconnection: keep-alive, Upgrade\r\n"
                    + "SEC-WEBSOCKET-KEY: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-Websocket-Version:13\r\n\r\n"
            )
            #expect(answer.hasPrefix("HTTP/1.1 101 Switching Protocols\r\n"), "\(answer)")
        }
    }

    @Test func anUpgradeWithoutAVersionOrKeyIsPlainHTTP() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            let answer = try client.exchange(
                "GET /ws/device?\(relay.deviceQuery()) HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
            )
            #expect(answer.head.hasPrefix("HTTP/1.1 426"), "\(answer.head)")
        }
    }
}

/// HTTP requests that never finish, or cannot be read, are answered and closed; every
/// connection holds its place for a bounded time; one address holds a bounded number of them.
@Suite(.timeLimit(.minutes(1))) struct HTTPEdgeTests {
    static let quick = ["RELAY_HTTP_REQUEST_TIMEOUT_S": "1", "RELAY_HTTP_IDLE_TIMEOUT_S": "1"]

    /// Sends `request` on a fresh connection and reads until the relay ends it.
    static func answer(_ relay: TestRelay, to request: String) async throws -> (status: String, text: String, ending: RawConnection.Ending) {
        let client = try RawConnection.open(port: relay.port)
        try client.send(request)
        let (bytes, ending) = try await client.readUntilEnd(within: .seconds(10))
        let text = String(decoding: bytes, as: UTF8.self)
        return (String(text.prefix(12)), text, ending)
    }

    @Test(arguments: ["GET /hea lthz HTTP/1.1\r\nHost: x\r\n\r\n", "GARBAGE\r\n\r\n", "GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n"])
    func aMalformedRequestGets400AndIsClosed(request: String) async throws {
        try await TestRelay.run { relay in
            let answer = try await Self.answer(relay, to: request)
            #expect(answer.status == "HTTP/1.1 400")
            #expect(answer.text.contains(#"{"detail":"Malformed HTTP request"}"#))
        }
    }

    @Test func aHugeHeaderOrQueryGets431AndIsClosed() async throws {
        try await TestRelay.run { relay in
            let big = String(repeating: "a", count: 100 * 1024)
            for request in ["GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(big)\r\n\r\n", "GET /healthz?q=\(big) HTTP/1.1\r\nHost: x\r\n\r\n"] {
                let answer = try await Self.answer(relay, to: request)
                #expect(answer.status == "HTTP/1.1 431")
                #expect(answer.text.contains("at most 16384 bytes"))
            }
            // Under the limit is fine.
            let fine = try await Self.answer(relay, to: "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: \(big.prefix(8000))\r\nConnection: close\r\n\r\n")
            #expect(fine.status == "HTTP/1.1 200")
        }
    }

    @Test func aSilentConnectionGets408AtTheRequestTimeout() async throws {
        try await TestRelay.run(Self.quick) { relay in
            let start = ContinuousClock.now
            let answer = try await Self.answer(relay, to: "")
            #expect(answer.status == "HTTP/1.1 408")
            #expect(ContinuousClock.now - start < .seconds(3))
        }
    }

    @Test func aHeaderSentAByteAtATimeGets408AtTheRequestTimeout() async throws {
        try await TestRelay.run(Self.quick) { relay in
            let client = try RawConnection.open(port: relay.port)
            let start = ContinuousClock.now
            let (bytes, ending) = try await onOwnThread { () -> ([UInt8], RawConnection.Ending?) in
                var bytes: [UInt8] = []
                for byte in "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa".utf8 {
                    try? client.send([byte])
                    let (more, ending) = try client.receive(timeout: .milliseconds(250))
                    bytes += more
                    if let ending { return (bytes, ending) }
                }
                return (bytes, nil)
            }
            #expect(ending != nil)
            #expect(String(decoding: bytes, as: UTF8.self).hasPrefix("HTTP/1.1 408"))
            #expect(ContinuousClock.now - start < .seconds(3))
        }
    }

    @Test func aBodyThatNeverEndsGets408() async throws {
        try await TestRelay.run(Self.quick) { relay in
            let answer = try await Self.answer(relay, to: "POST /api/link/send HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"a\":")
            #expect(answer.status == "HTTP/1.1 408")
        }
    }

    @Test func anIdleKeptAliveConnectionIsClosedAfterTheIdleTimeout() async throws {
        // 2 s: a loaded machine may take a second between the two requests.
        try await TestRelay.run(["RELAY_HTTP_IDLE_TIMEOUT_S": "2"]) { relay in
            let client = try RawConnection.open(port: relay.port)
            let first = try await client.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(first.hasPrefix("HTTP/1.1 200"))
            // Kept alive: a second request on it is answered too.
            let second = try await client.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            #expect(second.hasPrefix("HTTP/1.1 200"))
            let start = ContinuousClock.now
            let (bytes, ending) = try await client.readUntilEnd(within: .seconds(5))
            // Closed with nothing more said.
            #expect(bytes.isEmpty)
            #expect(ending == .closed)
            #expect(ContinuousClock.now - start < .seconds(4))
        }
    }

    @Test func oneAddressHoldsAtMostItsShareOfConnections() async throws {
        try await TestRelay.run(["RELAY_MAX_CONNECTIONS_PER_IP": "5"]) { relay in
            // An address of its own, so no other client of this relay counts against it.
            let address = "127.0.0.3"
            let held = try (0..<5).map { _ in try RawConnection.open(port: relay.port, source: address) }
            // Each of the five is served.
            for connection in held {
                let answer = try await connection.request("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                #expect(answer.hasPrefix("HTTP/1.1 200"), "\(answer)")
            }
            // A sixth from the same address is answered 429 with Retry-After, then closed.
            let sixth = try RawConnection.open(port: relay.port, source: address)
            try sixth.send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            let refused = try await sixth.readUntilEnd(within: .seconds(5))
            let answer = String(decoding: refused.bytes, as: UTF8.self)
            #expect(answer.hasPrefix("HTTP/1.1 429"), "\(answer)")
            #expect(answer.lowercased().contains("\r\nretry-after: 5\r\n"), "\(answer)")
            #expect(answer.contains("5 open connections"), "\(answer)")
            #expect(refused.ending == .closed)
            // The refusal is counted with its reason.
            let metrics = try await relay.get("/metrics")
            #expect(metrics.body.contains("relay_connections_refused_total{reason=\"per_address_cap\"} 1"), "\(metrics.body)")
            // Another address is not affected.
            let other = try RawConnection.open(port: relay.port, source: "127.0.0.4")
            #expect(try await other.request("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").hasPrefix("HTTP/1.1 200"))
            // Once one of the five ends, the address may open another.
            held[0].reset()
            _ = try await eventually("the address to have room again") { () -> Bool? in
                let again = try RawConnection.open(port: relay.port, source: address)
                let answer = try? await again.request("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                return answer?.hasPrefix("HTTP/1.1 200") == true ? true : nil
            }
        }
    }
}
