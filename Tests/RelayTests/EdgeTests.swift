/// The edge (issue "The edge"): what a hostile or broken client can make the relay hold or do.
import Foundation
import RelayTestSupport
import Testing

/// Control frames: a client's pings cost the relay a bounded amount, and only a client that
/// reads stays connected.
@Suite(.timeLimit(.minutes(1))) struct PingFloodTests {
    @Test func aClientFloodingPingsIsClosedWith1008AndGetsAtMostAPongPerRead() async throws {
        try await TestRelay.run { relay in
            let client = try RawConnection.open(port: relay.port)
            try client.send(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(relay.deviceQuery())"))
            // 500 pings of 125 bytes in one go, more than the 50 a burst may hold.
            let ping = RawFrame.make(RawFrame.ping, [UInt8](repeating: 7, count: 125))
            try? client.send(Array((0..<500).map { _ in ping }.joined()))
            let (bytes, _) = try await client.readUntilEnd(within: .seconds(10))
            let frames = RawFrame.parse(bytes)
            #expect(RawFrame.closeCode(frames) == 1008)
            // Pings read together are answered once (RFC 6455 §5.5.3): never a pong per ping.
            let pongs = frames.filter { $0.opcode == RawFrame.pong }.count
            #expect(pongs < 50, "\(pongs) pongs")
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
