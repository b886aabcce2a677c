/// A relay asked to stop (SIGTERM) stops, whatever its clients' connections are doing.
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import NIOPosix
import RelayTestSupport
import Testing

/// `relay serve` as a process: graceful shutdown on SIGTERM.
@Suite(.timeLimit(.minutes(1))) struct ShutdownTests {
    @Test func sigtermSendsGoAwayDrainsClosesWith1001AndExitsZero() async throws {
        let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_SHUTDOWN_DRAIN_S": "1"]
        let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
        let (process, port) = (relay.process, relay.port)
        defer { relay.kill() }
        let signer = try await CommandLineTests.relay(["token", "--sub", "alice", "--device", "robot-1"], environment: environment)
        let deviceURL = try await CommandLineTests.relay(["sign-url", "robot-1", "--url", "ws://127.0.0.1:\(port)"], environment: environment)
        let device = try await TestSocket.connect(deviceURL.stdout.trimmingCharacters(in: .whitespacesAndNewlines))
        let app = try await TestSocket.connect("ws://127.0.0.1:\(port)/ws/app?token=\(signer.stdout.trimmingCharacters(in: .whitespacesAndNewlines))")
        try app.send(["type": "webrtc_request", "device_id": "robot-1"])
        let sessionID = try await app.next("webrtc_credentials")["session_id"] as? String
        _ = try await device.next("webrtc_request")

        kill(process.processIdentifier, SIGTERM)
        for socket in [app, device] {
            let goAway = try await socket.next("go_away")
            #expect((goAway["reconnect_after_ms"] as? Int).map { $0 > 0 } == true)
        }
        // Neither client leaves within the drain: the relay ends their sessions and closes.
        for socket in [app, device] {
            let close = try await socket.next("webrtc_close")
            #expect(close["session_id"] as? String == sessionID)
            #expect(close["reason"] as? String == "shutdown")
            #expect(try await socket.closeCode() == 1001)
        }
        #expect(try await process.exited() == 0)
        #expect(process.exitedNormally)
    }

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
}
