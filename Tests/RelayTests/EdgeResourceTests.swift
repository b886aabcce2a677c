/// What a client can make the relay hold or wait for (issue "The edge"): nonces, HTTP links, a hanging TURN upstream, configuration traps.
import DeviceAuth
import Foundation
import HTTPTypes
import Registry
import RelayTestSupport
import RelayWebSocket
import Testing

/// Device nonces (contract §1.2): each device has its own share of the replay cache, and a
/// spent nonce stays spent when the relay restarts, even after a kill.
@Suite(.timeLimit(.minutes(1))) struct ReplayCacheTests {
    @Test func aDeviceThatSpendsItsShareIsRefusedAndOthersAreNot() async throws {
        try await TestRelay.run(["RELAY_DEVICE_CONNECTS_PER_WINDOW": "5"]) { relay in
            for _ in 0..<5 { try await relay.device("robot-1").close() }
            let refused = try await relay.upgrade("/ws/device?\(relay.deviceQuery("robot-1"))")
            #expect(refused.status == .tooManyRequests)
            #expect(refused.detail == "This device connected too often within the signature window; try again shortly")
            // Another device connects as usual.
            let other = try await relay.device("robot-2")
            try other.send(["type": "ping"])
            _ = try await other.next("pong")
        }
    }

    @Test func aSpentNonceStaysSpentAfterTheRelayIsKilledAndRestarted() async throws {
        try await withTemporaryDirectory { directory in
            let path = "\(directory)/relay.sqlite"
            let environment = ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_DB": path]
            let secret = DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: TestRelay.masterKey)
            let query = DeviceSignature.sign(
                deviceID: "robot-1",
                timestamp: Int(Date().timeIntervalSince1970),
                nonce: DeviceSignature.makeNonce(),
                secret: secret
            ).query
            var relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            defer { relay.kill() }
            let device = try await TestSocket.connect("ws://127.0.0.1:\(relay.port)/ws/device?\(query)")
            _ = device.hello
            // Spent nonces are committed with the store's batches; once this one is, a kill
            // cannot lose it.
            let store = try RelayStore(path: path)
            _ = try await eventually("the nonce to be committed") { try store.liveNonces(now: Int(Date().timeIntervalSince1970)).first }
            await relay.killed()

            relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
            let replay = try RawConnection.open(port: relay.port)
            let answer = try await replay.request(RawFrame.upgradeRequest(port: relay.port, pathAndQuery: "/ws/device?\(query)"))
            #expect(answer.hasPrefix("HTTP/1.1 401"), "\(answer)")
            #expect(answer.contains(AuthFailure.replayedNonce.detail))
            // A fresh signature still gets in.
            _ = try await ProcessClient(port: relay.port).device("robot-1", secret: secret)
        }
    }
}

/// HTTP fallback links are forgotten when they end (contract §7): opening and abandoning many
/// leaves the relay's memory where it was.
@Suite(.timeLimit(.minutes(3))) struct HTTPLinkMemoryTests {
    @Test func thirtyThousandAbandonedHTTPLinksLeaveNothingBehind() async throws {
        let environment = [
            "RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_RESUME_GRACE_S": "1",
            "RELAY_CONNECT_BURST": "100000", "RELAY_CONNECT_RATE_PER_MIN": "1000000",
        ]
        let relay = try await RelayProcess.start(binary: CommandLineTests.relayBinary, environment: environment)
        defer { relay.kill() }
        let token = try AppTokenSigner(secret: Array(TestRelay.jwtSecret.utf8)).token(
            userID: "alice", devices: nil, now: Date().timeIntervalSince1970, lifetime: 3600
        )
        let port = relay.port
        /// Opens `count` app links over one kept-alive connection and leaves each to lapse;
        /// returns once the relay says none is left, with its resident memory then.
        func openAndAbandon(_ count: Int) async throws -> Int {
            let opened = try await onOwnThread {
                let client = try RawConnection.open(port: port)
                var opened = 0
                for _ in 0..<count {
                    let answer = try client.exchange(
                        "POST /api/link HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \(token)\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
                    )
                    if answer.head.hasPrefix("HTTP/1.1 200") { opened += 1 }
                }
                return opened
            }
            #expect(opened == count)
            _ = try await eventually("every link to end", timeout: .seconds(30)) { () -> Bool? in
                let metrics = try await onOwnThread {
                    try RawConnection.open(port: port).exchange("GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").body
                }
                return metrics.contains(#"relay_links{kind="app"} 0"#) ? true : nil
            }
            return try #require(relay.residentKiB)
        }
        // The first batch grows the allocator's pools; the second must find them reusable.
        let first = try await openAndAbandon(15_000)
        let second = try await openAndAbandon(15_000)
        // A leak of ~1.4 KiB a link (the finding) would be ~20 MiB here.
        #expect(second - first < 4 * 1024, "resident \(first) KiB after the first 15,000 links, \(second) KiB after the next")
    }
}

/// A TURN upstream that hangs (issue "The edge", 7): every pending set-up is answered within its
/// timeouts, and a link's pending request holds up nothing else on it.
@Suite(.timeLimit(.minutes(1))) struct HangingTURNTests {
    @Test func fiftyPendingSetUpsGetTurnErrorInTimeAndTheLinksOtherSessionsFlow() async throws {
        let fake = FakeCloudflareTURN()
        try await fake.run { base in
            let environment = CloudflareTURNTests.environment(
                base,
                [
                    "CLOUDFLARE_TURN_CONNECT_TIMEOUT_MS": "500", "CLOUDFLARE_TURN_TIMEOUT_MS": "1000", "RELAY_MAX_SESSIONS_PER_DEVICE": "60",
                    "RELAY_MAX_SESSIONS_PER_APP": "60", "RELAY_RATE_BURST": "200",
                ]
            )
            try await TestRelay.run(environment) { relay in
                let device = try await relay.device()
                let app = try await relay.app()
                let (credentials, _) = try await relay.openSession(app: app, device: device)
                let sessionID = try #require(credentials["session_id"] as? String)
                // From now on the upstream never answers.
                fake.script(Array(repeating: .hang, count: 200))
                let start = ContinuousClock.now
                for index in 0..<50 { try app.send(["type": "webrtc_request", "device_id": "robot-1", "request_id": "r\(index)"]) }
                // The session already open goes on at once.
                try app.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:1 1 udp 1 192.0.2.1 1 typ host"]])
                _ = try await device.next("webrtc_ice")
                // ...and so does the link: a ping is answered before any of the fifty requests is
                // (none can be before its first attempt's timeout, 1 s).
                try await app.expectNothingPending()
                // Each request: one attempt (1 s), a retry after at most 300 ms, the retry (1 s).
                var answered: Set<String> = []
                while answered.count < 50 {
                    let error = try await app.next("error")
                    #expect(error["code"] as? String == "turn_error")
                    answered.insert(try #require(error["request_id"] as? String))
                }
                let elapsed = ContinuousClock.now - start
                #expect(elapsed < .seconds(4), "the last turn_error came after \(elapsed)")
                // Nothing was left reserved: the device's sessions are the one that works.
                try device.send(["type": "webrtc_ice", "session_id": sessionID, "candidate": ["candidate": "candidate:2 1 udp 1 192.0.2.2 1 typ host"]])
                _ = try await app.next("webrtc_ice")
            }
        }
    }

    @Test func readinessSaysNoWhileTheProviderCannotBeReachedFromTheStart() async throws {
        // Nothing listens on port 1: every call to the provider is refused.
        try await TestRelay.run(CloudflareTURNTests.environment("http://127.0.0.1:1")) { relay in
            let answer = try await relay.request(.get, "/readyz")
            #expect(answer.status == .serviceUnavailable)
            #expect((answer.json["problems"] as? [String])?.first?.hasPrefix("turn (cloudflare): Cloudflare API error") == true, "\(answer.json)")
        }
    }
}

/// Configuration that cannot surprise (issue "The edge", 8): no accidental development mode, a
/// `.env` read as a shell reads it, misspelt keys named.
@Suite(.timeLimit(.minutes(1))) struct ConfigurationTrapTests {
    @Test func nothingConfiguredDoesNotStartWithoutDev() async throws {
        let run = try await CommandLineTests.relay(["serve"])
        #expect(run.status == 78)
        #expect(run.stderr.contains("relay: configuration: nothing is configured: set RELAY_JWT_SECRET and RELAY_DEVICE_MASTER_KEY"))
        #expect(!run.stderr.contains("DEVELOPMENT MODE"))
    }

    @Test func devNeverListensBeyondThisMachine() async throws {
        for arguments in [["serve", "--dev", "--host", "0.0.0.0"], ["serve", "--dev"]] {
            let run = try await CommandLineTests.relay(arguments, environment: arguments.count == 2 ? ["RELAY_HOST": "0.0.0.0"] : [:])
            #expect(run.status == 78)
            #expect(run.stderr.contains("--dev serves only this machine (RELAY_HOST 127.0.0.1, ::1 or localhost), not '0.0.0.0'"))
        }
    }

    @Test func aMisspeltKeyStopsStartUpNamingTheRightOne() async throws {
        let run = try await CommandLineTests.relay(
            ["serve"],
            environment: ["RELAY_JWT_SECRET": TestRelay.jwtSecret, "RELAY_DEVICE_MASTER_KEY": TestRelay.masterKey, "RELAY_HEARTBEAT_SEC": "5"]
        )
        #expect(run.status == 78)
        #expect(run.stderr == "relay: configuration: RELAY_HEARTBEAT_SEC is not a setting of the relay (did you mean RELAY_HEARTBEAT_S?)\n")
    }

    @Test func aDotEnvWithExportQuotesAndCommentsConfiguresTheRelay() async throws {
        try await withTemporaryDirectory { directory in
            try """
            # the relay's secrets
            export RELAY_JWT_SECRET="\(TestRelay.jwtSecret)"   # quoted, as many .env files are
            export RELAY_DEVICE_MASTER_KEY='\(TestRelay.masterKey)'

            """.write(toFile: "\(directory)/.env", atomically: true, encoding: .utf8)
            let relay = try await RelayProcess.start(
                binary: CommandLineTests.relayBinary,
                environment: [:],
                directory: URL(fileURLWithPath: directory)
            )
            defer { relay.kill() }
            // Not development mode: the secrets are the file's, without their quotes.
            let client = ProcessClient(port: relay.port)
            let app = try await client.app("alice")
            let device = try await client.device("robot-1", secret: DeviceSignature.derivedSecret(deviceID: "robot-1", masterKey: TestRelay.masterKey))
            _ = (app.hello, device.hello)
        }
    }

    @Test func theSettingsFileCanLiveElsewhere() async throws {
        try await withTemporaryDirectory { directory in
            try "RELAY_JWT_SECRET=\(TestRelay.jwtSecret)\n".write(toFile: "\(directory)/relay.env", atomically: true, encoding: .utf8)
            let signed = try await CommandLineTests.relay(["token", "--sub", "alice", "--env-file", "\(directory)/relay.env"])
            #expect(signed.status == 0)
            let verifier = AppTokenVerifier(configuration: .init(secretKeys: [.init(secret: Array(TestRelay.jwtSecret.utf8))]))
            #expect(try verifier.verify(signed.stdout.trimmingCharacters(in: .whitespacesAndNewlines), now: Date().timeIntervalSince1970).userID == "alice")
            let missing = try await CommandLineTests.relay(["serve", "--env-file", "\(directory)/missing.env"])
            #expect(missing.status == 78)
            #expect(missing.stderr == "relay: configuration: cannot read the settings file \(directory)/missing.env (--env-file)\n")
        }
    }
}
