/// A relay asked to stop (SIGTERM) stops, whatever its clients' connections are doing.
import Foundation
import HTTPTypes
import HummingbirdTesting
import NIOCore
import NIOPosix
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
}
