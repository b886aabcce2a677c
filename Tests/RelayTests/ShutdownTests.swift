/// A relay asked to stop (SIGTERM) stops, whatever its clients' connections are doing.
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import NIOPosix
import Registry
import RelayTestSupport
import Testing

/// `relay serve` as a process: graceful shutdown on SIGTERM (what its clients see: `RestartTests`).
@Suite(.timeLimit(.minutes(1))) struct ShutdownTests {
    @Test func aConnectionThatNeverSentARequestDoesNotHoldUpAGracefulShutdown() async throws {
        let relay = try await RelayProcess.start(
            binary: CommandLineTests.relayBinary,
            environment: ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_SHUTDOWN_DRAIN_S": "0"]
        )
        defer { relay.kill() }
        // Connected, and silent: no request line, not a byte.
        let silent = try await ClientBootstrap(group: MultiThreadedEventLoopGroup.singleton).connect(host: "127.0.0.1", port: relay.port) { channel in
            channel.eventLoop.makeCompletedFuture { try NIOAsyncChannel<ByteBuffer, ByteBuffer>(wrappingChannelSynchronously: channel) }
        }
        // The relay has accepted it (a request on a second connection is answered after it).
        let http = HTTPClient(port: relay.port)
        #expect(try await http.client.get("/healthz").status == .ok)
        await http.shutdown()
        let status = try await silent.executeThenClose { _, _ in
            kill(relay.process.processIdentifier, SIGTERM)
            return try await relay.process.exited(within: .seconds(15))
        }
        #expect(status == 0)
    }

    @Test func aClientThatNeverReadsIsCutAtTheEndOfTheDrainAndWhatItMissedWaitsForItsResume() async throws {
        // Room to keep every message for the device's resume (the limits are not what is tested).
        let settings = [
            "RELAY_SHUTDOWN_DRAIN_S": "2", "RELAY_RATE_BURST": "1000",
            "RELAY_RESUME_BUFFER_MESSAGES": "1000", "RELAY_RESUME_BUFFER_BYTES": "\(64 * 1024 * 1024)",
        ]
        try await RestartTests.withStore(.sqlite, settings) { backing in
            let secret = try await backing.registry.addDevice("robot-1", owners: ["alice"], label: "", now: Date()).secret
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: backing.environment)
            defer { relay.kill() }
            // The device reads its hello, then never reads again (its buffer is small, soon full).
            let device = try RawConnection.open(port: relay.port, receiveBuffer: 4096)
            try device.send(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?" + ProcessClient.signedQuery("robot-1", secret: secret)))
            let hello = try await Self.firstMessage(on: device)
            #expect(hello["type"] as? String == "hello")
            var client = ProcessClient(port: relay.port)
            let app = try await client.app("alice")
            try app.send(["type": "webrtc_request", "device_id": "robot-1"])
            let sessionID = try #require(try await app.next("webrtc_credentials")["session_id"] as? String)
            // A megabyte of offers: more than the sockets' buffers take while nobody reads. (Not
            // more: decoding it all again on the resume is work for this process's event loops,
            // which the suite's other tests share.)
            let sdp = String(repeating: "a", count: 50_000)
            for index in 0..<20 { try app.send(["type": "webrtc_offer", "session_id": sessionID, "sdp": "\(index) \(sdp)"]) }
            // The relay has taken them all (a ping sent after them is answered after them).
            try app.send(["type": "ping", "request_id": "after-the-offers"])
            _ = try await app.next("pong")

            let stopping = ContinuousClock.now
            kill(relay.process.processIdentifier, SIGTERM)
            #expect(try await relay.process.exited(within: .seconds(15)) == 0)
            let took = ContinuousClock.now - stopping
            #expect(took < .seconds(3), "exited \(took) after SIGTERM with a 2 s drain")

            // On the next process the device resumes and gets everything it had not read.
            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: backing.environment)
            client = ProcessClient(port: relay.port)
            let resumed = try await client.device("robot-1", secret: secret, resume: .init(hello, lastSeq: 0))
            #expect(resumed.hello["resumed"] as? Bool == true)
            #expect(try await RestartTests.next("webrtc_request", on: resumed)["session_id"] as? String == sessionID)
            for index in 0..<20 {
                let offer = try await RestartTests.next("webrtc_offer", on: resumed)
                #expect((offer["sdp"] as? String)?.hasPrefix("\(index) ") == true)
            }
        }
    }

    /// The first WebSocket message a raw connection receives after the upgrade's answer.
    static func firstMessage(on connection: RawConnection) async throws -> JSONObject {
        var bytes: [UInt8] = []
        let deadline = ContinuousClock.now + .seconds(10)
        while ContinuousClock.now < deadline {
            let (more, ending) = try connection.receive(timeout: .milliseconds(200))
            bytes += more
            if let text = RawFrame.parse(bytes).first(where: { $0.opcode == RawFrame.text }) {
                return try #require(try JSONSerialization.jsonObject(with: Data(text.payload)) as? JSONObject)
            }
            if ending != nil { break }
        }
        throw TimedOut(what: "a message on the raw connection")
    }
}
