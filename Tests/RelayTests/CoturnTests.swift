import Foundation
import HTTPTypes
import OpenSSLCrypto
import RelayTestSupport
import TURNBroker
import Testing

/// The coturn provider's credentials against a real coturn (`use-auth-secret`) on loopback.
@Suite(.timeLimit(.minutes(1))) struct CoturnTests {
    static let secret = "coturn-shared-secret-for-tests"

    @Test func credentialFollowsTheTURNRestAPI() async throws {
        let provider = CoturnProvider(sharedSecret: "s3cret", turnURIs: ["turn:127.0.0.1:3478?transport=udp"], stunURIs: ["stun:127.0.0.1:3478"])
        let document = try await provider.mint(ttl: 600, identifier: "session-1")
        let turn = try #require(document.iceServers.last)
        let username = try #require(turn.username)
        let parts = username.split(separator: ":", maxSplits: 1)
        #expect(parts.count == 2 && parts[1] == "session-1")
        let expiry = try #require(Int(parts[0]))
        #expect(abs(expiry - (Int(Date().timeIntervalSince1970) + 600)) <= 2)
        // base64(HMAC-SHA1(secret, username)), as `openssl dgst -sha1 -hmac s3cret -binary | base64` prints.
        #expect(turn.credential == Data(LibCrypto.hmacSHA1(key: Array("s3cret".utf8), message: Array(username.utf8))).base64EncodedString())
        #expect(CoturnProvider.credential(username: "1800000000:alice", secret: "s3cret") == "3i66Yob+5ER4xVxIRXhvnAp6moo=")
        #expect(document.iceServers.first?.urls == .many(["stun:127.0.0.1:3478"]))
    }

    @Test func realCoturnAllocatesWithMintedCredentialsAndRefusesTamperedOnes() async throws {
        let coturn = try await Coturn.start(secret: Self.secret)
        defer { coturn.stop() }
        let environment = [
            "RELAY_TURN_PROVIDER": "coturn",
            "TURN_SHARED_SECRET": Self.secret,
            "TURN_URIS": "turn:127.0.0.1:\(coturn.port)?transport=udp",
        ]
        try await TestRelay.run(environment) { relay in
            let minted = try await relay.mintCredentials(token: relay.appToken("alice"))
            #expect(minted.status == .ok)
            let servers = try #require(minted.json["iceServers"] as? [[String: Any]])
            let turn = try #require(servers.last)
            let username = try #require(turn["username"] as? String)
            let credential = try #require(turn["credential"] as? String)
            #expect(username.hasSuffix(":user:alice"))
            #expect(turn["urls"] as? [String] == ["turn:127.0.0.1:\(coturn.port)?transport=udp"])

            let accepted = try await coturn.allocate(username: username, credential: credential)
            #expect(accepted.status == 0, "turnutils_uclient: \(accepted.output.suffix(400))")
            // One character changed (a credential that starts with "x" stays different too).
            let tampered = try await coturn.allocate(username: username, credential: (credential.first == "x" ? "y" : "x") + credential.dropFirst())
            #expect(tampered.status != 0)
            #expect(tampered.output.contains("Cannot complete Allocation"))
            let otherUser = try await coturn.allocate(username: username.replacingOccurrences(of: "alice", with: "mallory"), credential: credential)
            #expect(otherUser.status != 0)
        }
    }
}

/// A coturn server this test starts on 127.0.0.1 and ends by its PID.
struct Coturn {
    let process: ChildProcess
    let port: Int

    static func start(secret: String) async throws -> Coturn {
        let port = Int.random(in: 20_000...29_999)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("relay-coturn-\(port)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let process = try ChildProcess.run(
            "/usr/bin/turnserver",
            [
            "-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1", "--listening-port=\(port)",
            "--min-port=\(port + 10_000)", "--max-port=\(port + 10_100)",
            "--use-auth-secret", "--static-auth-secret=\(secret)", "--realm=relay.test",
            "--no-tls", "--no-dtls", "--no-cli", "--allow-loopback-peers", "--log-file=stdout", "--simple-log",
                "--pidfile=\(directory.appendingPathComponent("turnserver.pid").path)", "--db=\(directory.appendingPathComponent("turndb").path)",
            ],
            environment: ["PATH": "/usr/bin:/bin"],
            standardOutput: .pipe,
            standardError: .standardOutput
        )
        let output = process.standardOutput!
        // Ready once its listening servers exist (their UDP sockets are bound by then).
        let ready = await withCheckedContinuation { continuation in
            Thread.detachNewThread {
                var seen = ""
                while true {
                    let chunk = output.availableData
                    if chunk.isEmpty { return continuation.resume(returning: false) }
                    seen += String(decoding: chunk, as: UTF8.self)
                    if seen.contains("Total General servers") {
                        return continuation.resume(returning: true)
                    }
                }
            }
        }
        guard ready else {
            kill(process.processIdentifier, SIGKILL)
            Thread.detachNewThread { process.waitUntilExit() }
            throw CoturnDidNotStart()
        }
        // Keep draining its log so it never blocks on a full pipe.
        Thread.detachNewThread {
            while !output.availableData.isEmpty {}
        }
        return Coturn(process: process, port: port)
    }

    struct CoturnDidNotStart: Error {}

    /// Ends the server (SIGKILL: coturn takes its time over SIGTERM); it is reaped on a thread
    /// of its own so the caller never blocks.
    func stop() {
        kill(process.processIdentifier, SIGKILL)
        Thread.detachNewThread { [process] in process.waitUntilExit() }
    }

    /// One TURN allocation (and a short exchange) with coturn's own client.
    func allocate(username: String, credential: String) async throws -> (status: Int32, output: String) {
        let port = port
        return try await onOwnThread { try Self.allocate(username: username, credential: credential, port: port) }
    }

    private static func allocate(username: String, credential: String, port: Int) throws -> (status: Int32, output: String) {
        // `timeout` bounds a client that would keep retrying.
        let client = try ChildProcess.run(
            "/usr/bin/timeout",
            [
                "-s", "KILL", "15", "/usr/bin/turnutils_uclient", "-y", "-n", "1", "-c", "-u", username, "-w", credential, "-p", String(port),
                "127.0.0.1",
            ],
            environment: ["PATH": "/usr/bin:/bin"],
            standardOutput: .pipe,
            standardError: .standardOutput
        )
        let data = client.standardOutput!.readDataToEndOfFile()
        return (client.waitUntilExit(), String(decoding: data, as: UTF8.self))
    }
}
